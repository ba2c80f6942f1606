"""FER-2013's emotion classes, in the data set's own id order, and the colour each is drawn in.

This is the only place the order is written down. Training imports it to map folder
names and CSV ids to class indices; the exporter writes it into the ONNX model's
metadata, and serving reads it back from there (never from this tuple), so a model
always carries the labels it was trained with.
"""

EMOTIONS: tuple[str, ...] = (
    "angry",  # 0
    "disgust",  # 1
    "fear",  # 2
    "happy",  # 3
    "sad",  # 4
    "surprise",  # 5
    "neutral",  # 6
)

NUM_CLASSES = len(EMOTIONS)

#: Each expression's colour wherever one is drawn: the live viewer's bars and strips and
#: ``emopipe report``'s plots. Keyed by name, so a model with other labels still gets these
#: for the ones it shares (and a neutral grey, ``OTHER_COLOUR``, for the rest).
COLOURS: dict[str, str] = {
    "angry": "#e74c3c",
    "disgust": "#27ae60",
    "fear": "#8e44ad",
    "happy": "#f1c40f",
    "sad": "#3498db",
    "surprise": "#e67e22",
    "neutral": "#95a5a6",
}
OTHER_COLOUR = "#777777"
