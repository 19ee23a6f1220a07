"""onnx_snn/notes.py: the marks a conversion's note may start with."""
from onnx_snn import notes
from onnx_snn.convert import WARNING_NOTE


def test_marks_are_said_without_themselves():
    n = notes.interface("dropped the final Softmax 'sm'")
    assert n.startswith(notes.INTERFACE_NOTE) and notes.unmarked(n) == "dropped the final Softmax 'sm'"
    assert notes.unmarked(WARNING_NOTE + "w") == "w" and notes.unmarked("plain") == "plain"
    assert WARNING_NOTE == notes.WARNING_NOTE      # (convert's name for it, kept)
