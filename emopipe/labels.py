"""FER-2013's emotion classes, in the data set's own id order.

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
