"""The ``onnx-snn`` command's entry point: light to import, so that a Ctrl-C (or a SIGTERM)
while the command line's modules load exits like one during the work (130 / 143, one line)
instead of printing a traceback from inside an import."""
import signal
import sys


def _terminated(signum, frame):
    raise SystemExit(143)


def main(argv=None) -> int:
    old = signal.signal(signal.SIGTERM, _terminated)
    try:
        from .cli import main as cli_main
    except KeyboardInterrupt:
        print("onnx-snn: interrupted", file=sys.stderr)
        return 130
    except SystemExit:
        print("onnx-snn: terminated", file=sys.stderr)
        return 143
    finally:
        signal.signal(signal.SIGTERM, old)
    code = cli_main(argv)
    # the work is done and its exit status decided: a signal while the interpreter shuts down
    # would kill it with 143 and no word, as if the outputs it wrote were missing
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, signal.SIG_IGN)
    return code
