"""synthshift: deterministic procedural street scenes in two appearance domains, written in published layouts.

Every scene is a label map of the 19 Cityscapes trainIds drawn from one layout distribution: sky above a horizon,
a road and sidewalks converging to a vanishing point, optional terrain verges, building and wall facades standing on
the outer ground line, fences and hedges in front of them, trees, poles carrying traffic lights and signs, and
depth-sorted objects (cars, trucks, buses, trains, persons, riders on motorcycles or bicycles, parked two-wheelers)
scaled by their distance to the horizon. Two renderers turn a label map into an image:

- "game" (the GTA5-layout source domain): a saturated flat palette, per-instance shading, window grids on
  buildings, tiles on sidewalks and dashed lane marks.
- "photo" (the Cityscapes-layout target domain): the same classes in a hue-shifted, desaturated palette, low- and
  high-frequency texture, a lighting gradient, lens blur and sensor noise.

The two domains never share a scene (their layouts are independent draws) but share the layout distribution, so
the shift is in appearance only. Layouts come from `numpy.random.Generator(PCG64(SeedSequence((seed, domain,
index))))`; images and labels are PNGs written by PIL (pypng for SYNTHIA's 16-bit labels), so a seed writes
byte-identical files. Run `python -m segadapt.data.synthshift OUT` for a tiny set.
"""

from __future__ import annotations

import colorsys
import json
import time
from pathlib import Path

import numpy as np
import png
from PIL import Image
from PIL import ImageDraw
from PIL import ImageFilter

from segadapt.data.labels import CITYSCAPES_ID_TO_TRAINID
from segadapt.data.labels import CITYSCAPES_PALETTE
from segadapt.data.labels import IGNORE
from segadapt.data.labels import SYNTHIA_ID_TO_TRAINID

FORMATS = ("gta5", "cityscapes", "synthia", "voc")
MANIFEST = "synthshift.json"
VERSION = 1

# trainIds, named for readability of the scene code.
ROAD, SIDEWALK, BUILDING, WALL, FENCE, POLE, LIGHT, SIGN, VEGETATION, TERRAIN = range(10)
SKY, PERSON, RIDER, CAR, TRUCK, BUS, TRAIN, MOTORCYCLE, BICYCLE = range(10, 19)

# "game" palette: saturated, one clearly distinct colour per trainId.
GAME_PALETTE = np.array(
    [
        (120, 70, 150), (235, 60, 215), (150, 130, 60), (60, 130, 210), (215, 160, 110), (205, 205, 205),
        (255, 165, 0), (245, 245, 20), (40, 175, 35), (150, 255, 140), (70, 160, 255), (255, 20, 70),
        (255, 95, 30), (20, 25, 235), (25, 115, 110), (0, 205, 170), (140, 40, 20), (120, 0, 255), (170, 0, 70),
    ],
    dtype=np.float32,
)  # fmt: skip


def _photo_palette(game: np.ndarray, hue_shift: float = 0.11, saturation: float = 0.5) -> np.ndarray:
    """The "photo" palette: every game colour rotated in hue, desaturated and compressed in value."""
    out = np.empty_like(game)
    for index, (red, green, blue) in enumerate(game / 255.0):
        hue, sat, value = colorsys.rgb_to_hsv(red, green, blue)
        rgb = colorsys.hsv_to_rgb((hue + hue_shift) % 1.0, sat * saturation, 0.2 + 0.6 * value)
        out[index] = np.array(rgb) * 255.0
    return out


PHOTO_PALETTE = _photo_palette(GAME_PALETTE)

_TRAINID_TO_LABELID = {train_id: label_id for label_id, train_id in CITYSCAPES_ID_TO_TRAINID.items()}
# SYNTHIA has no terrain, truck or train: those pixels are written as void (0), as in the real dataset.
_TRAINID_TO_SYNTHIA = {t: s for s, t in SYNTHIA_ID_TO_TRAINID.items() if t not in (TERRAIN, TRUCK, TRAIN)}
# VOC mapping of the street classes; a rider is a person, trucks are not VOC cars; the rest is background.
_TRAINID_TO_VOC = {CAR: 7, PERSON: 15, RIDER: 15, BUS: 6, TRAIN: 19, MOTORCYCLE: 14, BICYCLE: 2}


def _table(mapping: dict[int, int], default: int, dtype=np.uint8) -> np.ndarray:
    table = np.full(256, default, dtype=dtype)
    for key, value in mapping.items():
        table[key] = value
    return table


LABELID_OF_TRAINID = _table(_TRAINID_TO_LABELID, 0)
SYNTHIA_OF_TRAINID = _table(_TRAINID_TO_SYNTHIA, 0, np.uint16)
VOC_OF_TRAINID = _table(_TRAINID_TO_VOC, 0)
VOC_OF_TRAINID[IGNORE] = IGNORE


# ------------------------------------------------------------------------------------------------------ painter
class _Painter:
    """Draws class regions into a trainId map and an instance map at the same time."""

    def __init__(self, width: int, height: int) -> None:
        self.width, self.height = width, height
        self.label = Image.new("L", (width, height), SKY)
        self.instance = Image.new("L", (width, height), 0)
        self._draw = (ImageDraw.Draw(self.label), ImageDraw.Draw(self.instance))
        self._next = 1

    def new_instance(self) -> int:
        self._next = self._next % 255 + 1
        return self._next

    def polygon(self, points, cls: int, instance: int) -> None:
        points = [(float(x), float(y)) for x, y in points]
        self._draw[0].polygon(points, fill=cls)
        self._draw[1].polygon(points, fill=instance)

    def ellipse(self, box, cls: int, instance: int, outline: int = 0) -> None:
        box = [float(v) for v in box]
        if box[2] < box[0] + 1 or box[3] < box[1] + 1:
            box = [box[0], box[1], max(box[2], box[0] + 1), max(box[3], box[1] + 1)]
        if outline:
            self._draw[0].ellipse(box, outline=cls, width=outline)
            self._draw[1].ellipse(box, outline=instance, width=outline)
        else:
            self._draw[0].ellipse(box, fill=cls)
            self._draw[1].ellipse(box, fill=instance)

    def rect(self, x0, y0, x1, y1, cls: int, instance: int) -> None:
        self.polygon([(x0, y0), (x1, y0), (x1, y1), (x0, y1)], cls, instance)

    def line(self, points, cls: int, instance: int, width: int) -> None:
        points = [(float(x), float(y)) for x, y in points]
        self._draw[0].line(points, fill=cls, width=max(1, int(width)))
        self._draw[1].line(points, fill=instance, width=max(1, int(width)))

    def arrays(self) -> tuple[np.ndarray, np.ndarray]:
        return np.asarray(self.label).copy(), np.asarray(self.instance).copy()


# ---------------------------------------------------------------------------------------------------- geometry
class _Street:
    """Perspective of one scene: horizon row, vanishing point and the bottom-row x of every ground line."""

    def __init__(self, rng: np.random.Generator, width: int, height: int) -> None:
        self.width, self.height = width, height
        self.horizon = height * rng.uniform(0.36, 0.5)
        self.vx = width * rng.uniform(0.38, 0.62)
        self.road = (width * rng.uniform(-0.05, 0.22), width * rng.uniform(0.78, 1.05))
        walk = width * rng.uniform(0.25, 0.5, size=2)
        self.walk = (self.road[0] - walk[0], self.road[1] + walk[1])
        verge = width * rng.uniform(0.3, 0.8, size=2) * (rng.random(2) < 0.45)
        self.base = (self.walk[0] - verge[0], self.walk[1] + verge[1])
        self.gap = width * rng.uniform(0.02, 0.08)

    def row(self, depth: float) -> float:
        """Image row of the ground at `depth` in (0, 1]: 0 at the horizon, 1 at the bottom edge."""
        return self.horizon + depth * (self.height - self.horizon)

    def along(self, bottom_x: float, depth: float) -> float:
        """x of the ground line through the vanishing point and (bottom_x, bottom edge), at `depth`."""
        return self.vx + depth * (bottom_x - self.vx)

    def depth_at(self, bottom_x: float, x: float) -> float:
        """Depth at which that ground line passes column x (the line's row there, as a depth)."""
        return (x - self.vx) / (bottom_x - self.vx)


# ------------------------------------------------------------------------------------------------ scene layers
def _draw_ground(painter: _Painter, street: _Street) -> None:
    width, height, horizon, vx = street.width, street.height, street.horizon, street.vx
    far = 4 * width
    painter.rect(-far, horizon, far, height + 1, SIDEWALK, 0)
    for side in (0, 1):
        if street.base[side] != street.walk[side]:
            corner = -far if side == 0 else far
            points = [(vx, horizon), (street.walk[side], height), (corner, height), (corner, horizon)]
            painter.polygon(points, TERRAIN, 0)
    painter.polygon([(vx - 0.5, horizon), (vx + 0.5, horizon), (street.road[1], height), (street.road[0], height)],
                    ROAD, 0)  # fmt: skip


def _facade(painter: _Painter, street: _Street, side: int, x0: float, x1: float, rise: float, cls: int) -> None:
    """A wall face between columns x0 and x1 standing on the side's base line; `rise` = height per unit depth."""
    corners = []
    for x in (x0, x1):
        depth = max(street.depth_at(street.base[side], x), 0.0)
        base = street.row(depth)
        corners.append((x, base, base - (base - street.horizon) * rise - 2))
    (xa, ba, ta), (xb, bb, tb) = corners
    painter.polygon([(xa, ta), (xb, tb), (xb, bb + 1), (xa, ba + 1)], cls, painter.new_instance())


def _draw_facades(painter: _Painter, street: _Street, rng: np.random.Generator) -> None:
    for side in (0, 1):
        end = street.vx - street.gap if side == 0 else street.vx + street.gap
        x = 0.0 if side == 0 else float(street.width)
        while (x < end) if side == 0 else (x > end):
            step = street.width * rng.uniform(0.08, 0.25)
            nxt = min(x + step, end) if side == 0 else max(x - step, end)
            wall = rng.random() < 0.18
            rise = rng.uniform(0.3, 0.8) if wall else rng.uniform(1.2, 3.5)
            _facade(painter, street, side, x, nxt, rise, WALL if wall else BUILDING)
            x = nxt
        if rng.random() < 0.55:
            cls = FENCE if rng.random() < 0.6 else VEGETATION
            start = rng.uniform(0.0, 0.5) * (end - (0.0 if side == 0 else street.width))
            x0 = (0.0 if side == 0 else float(street.width)) + start
            _facade(painter, street, side, x0, end, rng.uniform(0.25, 0.5), cls)


def _tree(painter: _Painter, street: _Street, rng: np.random.Generator, side: int, depth: float) -> None:
    line = street.base[side] if street.base[side] != street.walk[side] else street.walk[side]
    x, base = street.along(line, depth), street.row(depth)
    unit = base - street.horizon
    trunk = max(1.0, unit * 0.04)
    instance = painter.new_instance()
    crown = unit * rng.uniform(0.35, 0.6)
    top = base - unit * rng.uniform(1.2, 2.0)
    painter.rect(x - trunk, top + crown, x + trunk, base, VEGETATION, instance)
    painter.ellipse((x - crown, top - crown * 0.6, x + crown, top + crown * 1.2), VEGETATION, instance)


def _pole(painter: _Painter, street: _Street, rng: np.random.Generator, side: int, depth: float) -> None:
    x = street.along(street.road[side] + (street.walk[side] - street.road[side]) * 0.75, depth)
    base = street.row(depth)
    unit = base - street.horizon
    half = max(0.5, unit * 0.02)
    top = base - unit * rng.uniform(2.2, 3.2) - 3
    painter.rect(x - half, top, x + half, base, POLE, painter.new_instance())
    if rng.random() < 0.55:
        size = max(2.0, unit * 0.08)
        painter.rect(x - size, top, x + size, top + 2.4 * size, LIGHT, painter.new_instance())
    if rng.random() < 0.6:
        size = max(2.0, unit * 0.1)
        middle = top + (base - top) * rng.uniform(0.25, 0.45)
        painter.ellipse((x - size, middle - size, x + size, middle + size), SIGN, painter.new_instance())


# ---------------------------------------------------------------------------------------------------- objects
# (class, probability, width and height in units of the ground row's distance to the horizon)
_VEHICLES = {CAR: (1.0, 0.55), TRUCK: (1.15, 0.95), BUS: (1.4, 1.05), TRAIN: (2.4, 1.05)}
_OBJECTS = (
    (CAR, 0.33), (TRUCK, 0.08), (BUS, 0.08), (TRAIN, 0.06), (PERSON, 0.17),
    (RIDER, 0.14), (MOTORCYCLE, 0.07), (BICYCLE, 0.07),
)  # fmt: skip


def _vehicle(painter: _Painter, x: float, base: float, unit: float, cls: int) -> None:
    scale_w, scale_h = _VEHICLES[cls]
    half, height = unit * scale_w / 2, unit * scale_h
    instance = painter.new_instance()
    top = base - height
    if cls == CAR:
        painter.rect(x - half, base - 0.6 * height, x + half, base - 0.1 * height, cls, instance)
        painter.polygon([(x - 0.7 * half, base - 0.6 * height), (x - 0.45 * half, top), (x + 0.45 * half, top),
                         (x + 0.7 * half, base - 0.6 * height)], cls, instance)  # fmt: skip
    elif cls == TRUCK:
        painter.rect(x - half, top, x + 0.4 * half, base - 0.12 * height, cls, instance)
        painter.rect(x + 0.4 * half, top + 0.3 * height, x + half, base - 0.12 * height, cls, instance)
    else:
        painter.rect(x - half, top + 0.05 * height, x + half, base - 0.1 * height, cls, instance)
        painter.polygon([(x - 0.95 * half, top + 0.06 * height), (x - 0.85 * half, top), (x + 0.85 * half, top),
                         (x + 0.95 * half, top + 0.06 * height)], cls, instance)  # fmt: skip
    wheel = max(1.0, 0.12 * unit)
    for wx in (x - 0.65 * half, x + 0.65 * half):
        painter.ellipse((wx - wheel, base - 2 * wheel, wx + wheel, base), cls, instance)


def _person(painter: _Painter, x: float, feet: float, height: float, cls: int, legs: bool = True) -> None:
    instance = painter.new_instance()
    head = height * 0.11
    half = max(0.7, height * 0.11)
    painter.ellipse((x - head, feet - height, x + head, feet - height + 2 * head), cls, instance)
    body_top, hips = feet - height + 2 * head, feet - height * 0.45
    painter.rect(x - half, body_top, x + half, hips, cls, instance)
    if legs:
        painter.line([(x - half * 0.5, hips), (x - half * 0.8, feet)], cls, instance, half)
        painter.line([(x + half * 0.5, hips), (x + half * 0.8, feet)], cls, instance, half)


def _two_wheeler(painter: _Painter, x: float, base: float, unit: float, cls: int) -> None:
    instance = painter.new_instance()
    radius = unit * (0.13 if cls == BICYCLE else 0.15)
    spread = unit * 0.22
    thickness = max(1, int(unit * 0.03)) if cls == BICYCLE else 0
    for wx in (x - spread, x + spread):
        painter.ellipse((wx - radius, base - 2 * radius, wx + radius, base), cls, instance, outline=thickness)
    frame = base - radius
    if cls == BICYCLE:
        top = frame - radius
        points = [(x - spread, frame), (x - 0.2 * spread, top), (x + 0.6 * spread, top), (x + spread, frame)]
        painter.line(points, cls, instance, max(1, unit * 0.03))
        painter.line([(x - 0.2 * spread, top), (x, frame)], cls, instance, max(1, unit * 0.03))
    else:
        painter.polygon([(x - spread, frame), (x - 0.3 * spread, frame - 1.4 * radius),
                         (x + 0.8 * spread, frame - 1.2 * radius), (x + spread, frame)], cls, instance)  # fmt: skip


def _road_object(painter: _Painter, street: _Street, rng: np.random.Generator, cls: int, depth: float) -> None:
    base = street.row(depth)
    unit = base - street.horizon
    on_walk = cls == PERSON and rng.random() < 0.7 or cls in (MOTORCYCLE, BICYCLE) and rng.random() < 0.5
    side = int(rng.integers(2))
    if on_walk:
        low, high = sorted((street.road[side], street.walk[side]))
    else:
        low, high = street.road
    low, high = street.along(low, depth), street.along(high, depth)
    x = rng.uniform(low, high) if high > low else low
    if cls in _VEHICLES:
        _vehicle(painter, x, base, unit, cls)
    elif cls == PERSON:
        _person(painter, x, base, unit * rng.uniform(0.65, 0.85), PERSON)
    else:
        if cls == RIDER:
            ride = MOTORCYCLE if rng.random() < 0.5 else BICYCLE
            _person(painter, x, base - unit * 0.22, unit * 0.5, RIDER, legs=False)
            _two_wheeler(painter, x, base, unit, ride)
        else:
            _two_wheeler(painter, x, base, unit, cls)


def scene(rng: np.random.Generator, width: int, height: int) -> tuple[np.ndarray, np.ndarray]:
    """Draw one street scene.

    Returns:
        label (H, W) uint8 trainIds and instance (H, W) uint8 ids (0 = stuff) used by the renderers' shading.
    """
    painter = _Painter(width, height)
    street = _Street(rng, width, height)
    _draw_ground(painter, street)
    _draw_facades(painter, street, rng)
    things = [("tree", rng.uniform(0.15, 1.0), int(rng.integers(2))) for _ in range(rng.integers(0, 4))]
    things += [("pole", rng.uniform(0.1, 1.0), int(rng.integers(2))) for _ in range(rng.integers(1, 4))]
    classes, weights = zip(*_OBJECTS, strict=True)
    for cls in rng.choice(classes, size=int(rng.integers(2, 8)), p=weights):
        things.append((int(cls), rng.uniform(0.08, 0.95), 0))
    for kind, depth, side in sorted(things, key=lambda thing: thing[1]):
        if kind == "tree":
            _tree(painter, street, rng, side, depth)
        elif kind == "pole":
            _pole(painter, street, rng, side, depth)
        else:
            _road_object(painter, street, rng, kind, depth)
    return painter.arrays()


# -------------------------------------------------------------------------------------------------- rendering
def _smooth_noise(rng: np.random.Generator, width: int, height: int, cell: int) -> np.ndarray:
    """(H, W) float32 noise of unit-ish amplitude varying over about `cell` pixels (bilinear-upsampled grid)."""
    grid = rng.standard_normal((height // cell + 2, width // cell + 2)).astype(np.float32)
    image = Image.fromarray(grid, mode="F").resize((width + 2 * cell, height + 2 * cell), Image.BILINEAR)
    return np.asarray(image)[cell : cell + height, cell : cell + width]


def render_game(label: np.ndarray, instance: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """The "game" look: flat saturated colours, per-instance shading, window grids, tiles and lane dashes.

    Args:
        label: (H, W) uint8 trainIds; instance: (H, W) uint8 instance ids.

    Returns:
        (H, W, 3) uint8 RGB.
    """
    height, width = label.shape
    rows, cols = np.mgrid[0:height, 0:width]
    shade = rng.uniform(0.85, 1.15, size=256).astype(np.float32)[instance]
    windows = (label == BUILDING) & (cols % 8 < 4) & (rows % 10 < 5)
    tiles = (label == SIDEWALK) & ((cols // 6 + rows // 6) % 2 == 0)
    dashes = (label == ROAD) & (np.abs(cols - width / 2) < 1.5) & (rows % 12 < 6)
    factor = shade * np.where(windows, 0.65, 1.0) * np.where(tiles, 0.9, 1.0)
    colour = GAME_PALETTE[label] * factor[..., None]
    colour[dashes] = 245.0
    return np.clip(colour + 0.5, 0, 255).astype(np.uint8)


def render_photo(label: np.ndarray, instance: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """The "photo" look: shifted desaturated palette, texture, lighting gradient, blur and sensor noise.

    Args:
        label: (H, W) uint8 trainIds; instance: (H, W) uint8 instance ids.

    Returns:
        (H, W, 3) uint8 RGB.
    """
    height, width = label.shape
    rows, cols = np.mgrid[0:height, 0:width].astype(np.float32)
    jitter = rng.uniform(0.88, 1.12, size=(256, 3)).astype(np.float32)[instance]
    texture = 1.0 + 0.08 * _smooth_noise(rng, width, height, 8) + 0.04 * rng.standard_normal((height, width))
    angle = rng.uniform(0.0, 2.0 * np.pi)
    strength = rng.uniform(0.2, 0.4)
    light = 1.0 + strength * ((cols / width - 0.5) * np.cos(angle) + (rows / height - 0.5) * np.sin(angle))
    colour = PHOTO_PALETTE[label] * jitter * (texture * light)[..., None]
    image = Image.fromarray(np.clip(colour + 0.5, 0, 255).astype(np.uint8))
    image = image.filter(ImageFilter.GaussianBlur(radius=float(rng.uniform(0.6, 1.2))))
    noisy = np.asarray(image).astype(np.float32) + rng.normal(0.0, 4.0, size=(height, width, 3))
    return np.clip(noisy + 0.5, 0, 255).astype(np.uint8)


_DOMAINS = {"game": (0, render_game), "photo": (1, render_photo)}


def make_sample(seed: int, domain: str, index: int, size: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """Scene `index` of `domain` ("game" or "photo"): image (H, W, 3) uint8 RGB and label (H, W) uint8 trainIds."""
    code, render = _DOMAINS[domain]
    layout = np.random.Generator(np.random.PCG64(np.random.SeedSequence((seed, code, index, 0))))
    look = np.random.Generator(np.random.PCG64(np.random.SeedSequence((seed, code, index, 1))))
    label, instance = scene(layout, size[0], size[1])
    return render(label, instance, look), label


# ---------------------------------------------------------------------------------------------------- writing
def _save(image: Image.Image, path: Path, **options) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path, **options)


def _labelid_png(label: np.ndarray, palette_mode: bool) -> Image.Image:
    """Cityscapes labelIds as an 8-bit PNG image: palette mode (as GTA5 ships them) or grey (as gtFine)."""
    image = Image.fromarray(LABELID_OF_TRAINID[label])
    if palette_mode:
        colours = np.zeros((256, 3), dtype=np.uint8)
        for label_id, train_id in CITYSCAPES_ID_TO_TRAINID.items():
            colours[label_id] = CITYSCAPES_PALETTE[train_id]
        image = image.convert("P")
        image.putpalette(colours.reshape(-1).tolist())
    return image


def _write_synthia_label(label: np.ndarray, instance: np.ndarray, path: Path) -> None:
    """16-bit 3-channel PNG in file order: SYNTHIA class id (cv2's channel -1, as it reads BGR), instance id, 0."""
    height, width = label.shape
    planes = np.stack([SYNTHIA_OF_TRAINID[label], instance.astype(np.uint16), np.zeros_like(label, np.uint16)], -1)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as handle:
        png.Writer(width, height, greyscale=False, bitdepth=16).write(handle, planes.reshape(height, width * 3))


def _write_domain(out: Path, fmt: str, index: int, image: np.ndarray, label: np.ndarray, instance) -> None:
    split = "val" if index % 4 == 3 else "train"
    if fmt == "gta5":
        _save(Image.fromarray(image), out / "gta5" / "images" / f"{index:05d}.png")
        _save(_labelid_png(label, palette_mode=True), out / "gta5" / "labels" / f"{index:05d}.png")
    elif fmt == "synthia":
        _save(Image.fromarray(image), out / "synthia" / "RGB" / f"{index:07d}.png")
        _write_synthia_label(label, instance, out / "synthia" / "GT" / "LABELS" / f"{index:07d}.png")
    elif fmt == "cityscapes":
        name = f"synth_{index:06d}_000000"
        _save(Image.fromarray(image), out / "cityscapes" / "leftImg8bit" / split / "synth" / f"{name}_leftImg8bit.png")
        _save(_labelid_png(label, palette_mode=False),
              out / "cityscapes" / "gtFine" / split / "synth" / f"{name}_gtFine_labelIds.png")  # fmt: skip
    else:
        name = f"synth_{index:06d}"
        _save(Image.fromarray(image), out / "voc" / "JPEGImages" / f"{name}.jpg", quality=95)
        _save(Image.fromarray(VOC_OF_TRAINID[label]), out / "voc" / "SegmentationClassAug" / f"{name}.png")


def _write_voc_lists(out: Path, count: int) -> None:
    lists = out / "voc" / "ImageSets" / "Segmentation"
    lists.mkdir(parents=True, exist_ok=True)
    val = [i for i in range(count) if i % 4 == 3]
    train_aug = [i for i in range(count) if i % 4 != 3]
    for name, indices in (("val", val), ("train_aug", train_aug), ("train", train_aug[::2])):
        (lists / f"{name}.txt").write_text("".join(f"synth_{i:06d}\n" for i in indices))


def _check_arguments(size: tuple[int, int], count: int, formats: tuple[str, ...]) -> None:
    if len(size) != 2 or min(size) < 16:
        raise ValueError(f"synthshift size = {size!r}: expected (W, H), each at least 16 pixels")
    if count < 1:
        raise ValueError(f"synthshift count = {count}: expected at least 1 image per domain")
    unknown = [f for f in formats if f not in FORMATS]
    if unknown or not formats:
        raise ValueError(f"synthshift formats = {formats!r}: expected a non-empty subset of {', '.join(FORMATS)}")


def manifest(seed: int, size: tuple[int, int], count: int, formats: tuple[str, ...]) -> dict:
    """What a generated tree holds; written last to OUT/synthshift.json, so its presence marks a complete set."""
    return {"version": VERSION, "seed": seed, "size": list(size), "count": count, "formats": sorted(formats)}


def generate(
    out: str | Path,
    seed: int = 0,
    size: tuple[int, int] = (256, 128),
    count: int = 200,
    formats: tuple[str, ...] = ("gta5", "cityscapes"),
) -> dict:
    """Write `count` scenes per domain in the requested layouts under `out`.

    gta5 and synthia hold "game" scenes, cityscapes and voc "photo" scenes (the same scenes in both layouts of a
    domain); the photo domain is split 3:1 into train and val (every fourth scene is val).

    Returns:
        The manifest plus `files` (number written per format) and `seconds`.
    """
    start = time.perf_counter()
    size = (int(size[0]), int(size[1]))
    formats = tuple(formats)
    _check_arguments(size, count, formats)
    out = Path(out)
    wanted = {"game": [f for f in ("gta5", "synthia") if f in formats],
              "photo": [f for f in ("cityscapes", "voc") if f in formats]}  # fmt: skip
    for domain, domain_formats in wanted.items():
        for index in range(count if domain_formats else 0):
            code, render = _DOMAINS[domain]
            layout = np.random.Generator(np.random.PCG64(np.random.SeedSequence((seed, code, index, 0))))
            look = np.random.Generator(np.random.PCG64(np.random.SeedSequence((seed, code, index, 1))))
            label, instance = scene(layout, size[0], size[1])
            image = render(label, instance, look)
            for fmt in domain_formats:
                _write_domain(out, fmt, index, image, label, instance)
    if "voc" in formats:
        _write_voc_lists(out, count)
    info = manifest(seed, size, count, formats)
    (out / MANIFEST).write_text(json.dumps(info, sort_keys=True) + "\n")
    files = {fmt: count * 2 for fmt in formats}
    return {**info, "files": files, "seconds": round(time.perf_counter() - start, 2)}


def main(argv: list[str] | None = None) -> None:
    """Write a tiny set (16 scenes per domain, every format) and print what was written."""
    import argparse

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", nargs="?", default="runs/data/synthshift_tiny")
    parser.add_argument("--count", type=int, default=16)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    print(generate(args.out, seed=args.seed, count=args.count, formats=FORMATS))


if __name__ == "__main__":
    main()
