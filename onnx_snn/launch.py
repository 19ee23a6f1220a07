"""The ``onnx-snn`` command's entry point: light to import, so that a Ctrl-C (or a SIGTERM)
while the command line's modules load exits like one during the work (130 / 143, one line)
instead of printing a traceback from inside an import."""
import os
import signal
import sys


def _terminated(signum, frame):
    raise SystemExit(143)


def _flushed_exit(code: int) -> None:
    """The process ended at once with ``code`` (this does not return), its exit functions run
    and its output streams flushed first."""
    import atexit
    try:
        atexit._run_exitfuncs()     # (a process group's, a data loader's clean-up)
    except BaseException:
        pass
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except Exception:
            pass
    os._exit(code)


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
    if code in (130, 143):
        # interrupted, its clean-up done: ended here, not by the interpreter's shutdown, which
        # destroys what the work left (an onnxruntime session whose run a signal stopped
        # aborted the process in its destructor then: exit 134 and "terminate called", not 130)
        _flushed_exit(code)
    # the work is done and its exit status decided: a signal while the interpreter shuts down
    # killed it with 143 and no word, as if the outputs it wrote were missing; it now ends the
    # process at once with that status (this is the console script's entry: the process ends
    # after it; not ignored, which children would inherit and a stuck shutdown would keep)

    def done(signum, frame):
        _flushed_exit(code)
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, done)
    return code
