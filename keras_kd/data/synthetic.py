"""Procedural SYNTHETIC faces: a deterministic, licence-free stand-in for real face data.

Real face sets (CelebA, LFW, MTFL) cannot ship with the repo, yet tests, CI and first experiments need images
with identities and exact 5-point landmarks. Every identity here has fixed traits (face shape, skin, eyes,
brows, nose, mouth, hair, a skin texture, glasses habit) drawn from small palettes or narrow ranges, so
identities share many of them; every image adds jitter of those traits comparable to the between-identity
spread, plus pose, expression, lighting, background clutter and noise. Identity is learnable, not trivial.
No image depicts a real person.

Geometry lives in a canonical face frame (origin at the face centre, unit = half the face height, v down)
mapped to pixels by one rotation/scale/translation/horizontal-squash transform. Pixels are rendered by the
inverse map with vectorised soft masks (about one pixel of anti-aliasing); landmarks by the forward map, so
they are exact. Rendering puts the centre of pixel [row, col] at (x=col, y=row); landmarks are returned in the
pipeline's continuous convention (pixel i spans [i, i + 1), centre i + 0.5), hence the + 0.5 in `_landmarks`.
"""
from __future__ import annotations

import dataclasses
import functools
import io
import math
import multiprocessing
import os

import numpy as np
from PIL import Image

from keras_kd.data.example import Item, write_dataset

HAIR = np.array([[.07, .05, .04], [.22, .13, .07], [.42, .27, .13], [.72, .58, .33], [.5, .2, .07], [.55, .55, .55]])
IRIS = np.array([[.28, .16, .07], [.16, .32, .55], [.2, .42, .25], [.42, .36, .22]])
SCLERA, PUPIL, MOUTH_INSIDE = np.array([.93, .93, .9]), np.array([.03, .03, .03]), np.array([.15, .04, .04])
TEXTURES = ("freckles", "blush", "mole", "stripes")
# Half the face height as a fraction of the image: forehead to chin fill it, as in a face detector's box
# (eyes about 0.3 of the width apart). Version 1 drew the face at 0.34, hair and neck around it: the same
# pixel error was 1.5 times the NRMSE, and a /8 student needed 4 times the steps (docs/recipe.md, section 10).
FACE_SCALE = 0.5
VERSION = 2  # in the data's name: a run refuses stages trained on another version's faces


def identity_params(num_identities: int, seed: int) -> list[dict]:
    """Fixed traits of each identity (canonical-frame units, RGB in 0..1)."""
    rng = np.random.default_rng([seed, 7919])
    out = []
    for _ in range(num_identities):
        skin = np.array([.93, .76, .62]) * rng.uniform(0.45, 1.0) + rng.normal(0, 0.025, 3)
        freckles = rng.uniform([0.18, -0.08], [0.55, 0.3], (12, 2))
        freckles[:, 0] *= rng.choice([-1, 1], 12)  # on both cheeks
        out.append(dict(
            face_ax=rng.uniform(0.68, 0.84), face_ay=rng.uniform(0.94, 1.06), chin=rng.uniform(0, 0.3),
            skin=np.clip(skin, 0, 1), hair=np.clip(HAIR[rng.integers(len(HAIR))] + rng.normal(0, .03, 3), 0, 1),
            hair_style=int(rng.integers(4)), hairline=rng.uniform(-0.78, -0.5), parting=rng.uniform(-0.3, 0.3),
            hair_volume=rng.uniform(0.04, 0.2),
            eye_dx=rng.uniform(0.26, 0.37), eye_y=rng.uniform(-0.2, -0.08), eye_r=rng.uniform(0.1, 0.15),
            iris=IRIS[rng.integers(len(IRIS))], brow_gap=rng.uniform(0.13, 0.2),
            brow_thick=rng.uniform(0.025, 0.05), brow_tilt=rng.uniform(-0.3, 0.3), brow_arch=rng.uniform(0, 0.06),
            nose_y=rng.uniform(0.12, 0.28), nose_w=rng.uniform(0.07, 0.13),
            mouth_gap=rng.uniform(0.17, 0.28), mouth_hw=rng.uniform(0.18, 0.3), lip=rng.uniform(0.025, 0.05),
            lip_colour=np.clip(skin * [0.95, 0.55, 0.55] + rng.normal(0, 0.04, 3), 0, 1),
            texture=TEXTURES[rng.integers(len(TEXTURES))],
            freckles=freckles, mole=rng.uniform([-0.5, -0.45], [0.5, 0.5]),
            stripes=rng.uniform([18, 0, 0], [40, math.pi, 2 * math.pi]),  # frequency, direction, phase
            glasses=rng.uniform(0.5, 0.9) if rng.random() < 0.2 else 0.0,
        ))
    return out


def _scene(p: dict, rng: np.random.Generator) -> dict:
    """All per-image randomness, drawn up front so landmarks are known without rendering."""
    def jit(key, sd):
        return p[key] + rng.normal(0, sd)

    light_angle = rng.uniform(0, 2 * math.pi)
    s = dict(p, face_ax=jit("face_ax", 0.03), eye_dx=jit("eye_dx", 0.02), eye_y=jit("eye_y", 0.02),
             eye_r=jit("eye_r", 0.012), brow_gap=jit("brow_gap", 0.02), brow_tilt=jit("brow_tilt", 0.1),
             nose_y=jit("nose_y", 0.03), nose_w=jit("nose_w", 0.015), mouth_hw=jit("mouth_hw", 0.03),
             skin=np.clip(p["skin"] + rng.normal(0, 0.04, 3), 0, 1),
             hair=np.clip(p["hair"] + rng.normal(0, 0.04, 3), 0, 1),
             angle=math.radians(rng.uniform(-15, 15)), scale=rng.uniform(0.9, 1.1),
             shift=rng.uniform(-0.06, 0.06, 2), yaw=rng.uniform(-1, 1),
             smile=rng.uniform(-0.3, 1), mouth_open=max(0.0, rng.uniform(-0.6, 1)),
             eye_open=0.15 if rng.random() < 0.05 else rng.uniform(0.45, 1.1), gaze=rng.uniform(-0.25, 0.25, 2),
             wears_glasses=rng.random() < p["glasses"], gain=rng.uniform(0.65, 1.25),
             contrast=rng.uniform(0.7, 1.2), white=rng.normal(1, 0.05, 3),
             light=rng.uniform(0, 0.6) * np.array([math.cos(light_angle), math.sin(light_angle)]),
             background=rng.uniform(0.05, 0.95, (2, 3)), clutter=rng.uniform(size=(rng.integers(2, 7), 9)),
             noise=rng.uniform(0.01, 0.04), noise_seed=int(rng.integers(2**32)))
    s["mouth_y"] = s["nose_y"] + p["mouth_gap"] + rng.normal(0, 0.02)
    s["shift_u"] = 0.08 * s["yaw"]  # inner features slide sideways with a turned head; the nose tip more
    s["mouth_hw"] *= 1 + 0.12 * s["smile"]
    return {key: val.astype(np.float32) if isinstance(val, np.ndarray) else val for key, val in s.items()}


def _pose(s: dict, size: int) -> tuple:
    """(scale in px per unit, cos, sin, centre x, centre y, horizontal squash) of the canonical->pixel map."""
    centre = (size - 1) / 2 + s["shift"] * size + [0, 0.15 * FACE_SCALE * size]
    return (FACE_SCALE * size * s["scale"], math.cos(s["angle"]), math.sin(s["angle"]), float(centre[0]),
            float(centre[1]), 1 - 0.12 * abs(s["yaw"]))


def _forward(s: dict, size: int, uv) -> np.ndarray:
    """Canonical (u, v) points [n, 2] -> pixel (x, y)."""
    k, c, si, cx, cy, squash = _pose(s, size)
    a, b = np.asarray(uv, np.float64).T
    a = a * squash
    return np.stack([cx + k * (c * a - si * b), cy + k * (si * a + c * b)], 1).astype(np.float32)


def _landmarks(s: dict, size: int) -> np.ndarray:
    su = s["shift_u"]
    return _forward(s, size, [[su - s["eye_dx"], s["eye_y"]], [su + s["eye_dx"], s["eye_y"]],
                              [1.6 * su, s["nose_y"]],  # the tip sticks out, so it moves most with yaw
                              [su - s["mouth_hw"], s["mouth_y"]], [su + s["mouth_hw"], s["mouth_y"]]]) + 0.5


@functools.lru_cache(maxsize=8)
def _grid(size: int) -> tuple:
    y, x = np.mgrid[0:size, 0:size].astype(np.float32)
    return x, y


def _soft(du, dv, ax, ay, px):
    """Anti-aliased ellipse coverage in 0..1, from a first-order signed distance to the outline."""
    r = np.sqrt((du / ax) ** 2 + (dv / ay) ** 2)
    grad = np.sqrt((du / ax**2) ** 2 + (dv / ay**2) ** 2)
    dist = (r - 1) * np.maximum(r / (grad + 1e-9), min(ax, ay))
    return np.clip(0.5 - dist / px, 0, 1)


def _paint(img, alpha, colour) -> None:
    img += alpha[..., None] * (np.asarray(colour, np.float32) - img)


def _rotate(du, dv, angle):
    c, s = math.cos(angle), math.sin(angle)
    return c * du + s * dv, -s * du + c * dv


def _window(size: int, cx: float, cy: float, r: float) -> tuple:
    """Pixel slices of the square of half-side r around (cx, cy): small features are painted only there."""
    return (slice(max(int(cy - r), 0), max(min(int(cy + r) + 2, size), 0)),
            slice(max(int(cx - r), 0), max(min(int(cx + r) + 2, size), 0)))


def _render(s: dict, size: int) -> np.ndarray:
    x, y = _grid(size)
    k, c, si, cx, cy, squash = _pose(s, size)
    u, v = _rotate(x - cx, y - cy, s["angle"])
    u, v, px = u / (k * squash), v / k, 1 / k
    t = ((x + y) / (2 * size))[..., None]
    img = (s["background"][0] * (1 - t) + s["background"][1] * t).astype(np.float32)
    for ox, oy, rx, ry, angle, kind, *colour in s["clutter"]:
        rx, ry = (0.03 + 0.22 * rx) * size, (0.03 + 0.22 * ry) * size
        w = _window(size, ox * size, oy * size, math.hypot(rx, ry))
        eu, ev = _rotate(x[w] - ox * size, y[w] - oy * size, angle * math.pi)
        box = np.clip(0.5 + np.minimum(rx - abs(eu), ry - abs(ev)), 0, 1)
        _paint(img[w], _soft(eu, ev, rx, ry, 1.0) if kind < 0.5 else box, colour)

    skin, hair, ax, ay, vol, su = s["skin"], s["hair"], s["face_ax"], s["face_ay"], s["hair_volume"], s["shift_u"]
    _paint(img, _soft(u, v - 0.95, 0.33, 0.5, px), skin * 0.8)  # neck
    back = {2: (0.03, ax + 0.03, ay + 0.02), 3: (0.25, ax + 0.22 + vol, ay * 0.85 + vol)}.get(
        s["hair_style"], (0.12, ax + 0.07 + vol, ay * 0.92 + vol))
    _paint(img, _soft(u, v + back[0], back[1], back[2], px), hair)
    if s["hair_style"] == 1:  # long hair falling to the shoulders
        _paint(img, _soft(u, v - 0.35, ax + 0.12 + vol, 0.95, px), hair * 0.9)
    for side in (-1, 1):  # ears
        ear = (side * (ax - 0.03) + 0.5 * su, s["eye_y"] + 0.12)
        w = _window(size, *_forward(s, size, [ear])[0], 0.2 * k)
        _paint(img[w], _soft(u[w] - ear[0], v[w] - ear[1], 0.09, 0.16, px), skin * 0.85)
    face = _soft(u / (1 - s["chin"] * np.clip(v, 0, 1) ** 2), v, ax, ay, px)  # narrower towards the chin
    _paint(img, face, skin * (1 - 0.18 * (u**2 + v**2))[..., None])

    w = _window(size, cx, cy, 1.1 * k)
    fu, fv, sub, fa = u[w] - su, v[w], img[w], face[w]
    if s["texture"] == "freckles":
        d = np.sqrt((fu[..., None] - s["freckles"][:, 0]) ** 2 + (fv[..., None] - s["freckles"][:, 1]) ** 2)
        _paint(sub, fa * np.clip(0.5 - (d.min(-1) - 0.022) / px, 0, 0.8), skin * 0.6)
    elif s["texture"] == "blush":
        for side in (-1, 1):
            _paint(sub, 0.4 * fa * _soft(fu - side * (s["eye_dx"] + 0.06), fv - s["nose_y"], 0.14, 0.09, px),
                   [0.85, 0.3, 0.3])
    elif s["texture"] == "mole":
        _paint(sub, fa * _soft(fu - s["mole"][0], fv - s["mole"][1], 0.04, 0.04, px), [0.25, 0.12, 0.08])
    else:
        freq, angle, phase = s["stripes"]
        wave = np.sin(freq * _rotate(fu, fv, angle)[0] + phase)
        _paint(sub, 0.3 * fa * np.clip((wave - 0.4) * 3, 0, 1), skin * [0.6, 0.7, 1.1])
    buzz = s["hair_style"] == 2
    hairline = s["hairline"] - 0.2 * buzz + s["parting"] * u + 0.4 * u**2
    _paint(img, face * np.clip(0.5 + (hairline - v) / px, 0, 1), (hair + skin) / 2 if buzz else hair)

    lm = _landmarks(s, size)
    eye_y, eye_r = s["eye_y"], s["eye_r"]
    lid = eye_r * 0.55 * s["eye_open"]
    for side, (ex, ey) in zip((-1, 1), lm[:2]):
        w = _window(size, ex, ey, k * (s["brow_gap"] + 1.5 * eye_r + 0.1))
        eu, ev, sub = u[w] - su - side * s["eye_dx"], v[w] - eye_y, img[w]
        bu, bv = _rotate(eu, ev + s["brow_gap"], side * s["brow_tilt"])
        bv = bv + s["brow_arch"] * (1 - np.minimum((bu / (1.3 * eye_r)) ** 2, 1))
        _paint(sub, 0.9 * _soft(bu, bv, 1.3 * eye_r, s["brow_thick"], px), hair * 0.8)
        _paint(sub, _soft(eu, ev, eye_r + 0.02, lid + 0.02, px), skin * 0.4)  # lids and lashes
        white = _soft(eu, ev, eye_r, lid, px)
        _paint(sub, white, SCLERA)
        gu, gv = eu - s["gaze"][0] * eye_r, ev - s["gaze"][1] * lid
        _paint(sub, white * _soft(gu, gv, 0.5 * eye_r, 0.5 * eye_r, px), s["iris"])
        _paint(sub, white * _soft(gu, gv, 0.22 * eye_r, 0.22 * eye_r, px), PUPIL)
        if s["wears_glasses"]:
            outer, inner = _soft(eu, ev, 1.5 * eye_r, 1.1 * eye_r, px), _soft(eu, ev, 1.5 * eye_r - 0.03,
                                                                             1.1 * eye_r - 0.03, px)
            _paint(sub, np.clip(outer - inner, 0, 1), [0.1, 0.1, 0.12])

    nose_y, nose_w = s["nose_y"], s["nose_w"]
    w = _window(size, *(lm[:2].mean(0) + lm[2]) / 2, k * ((nose_y - eye_y) / 2 + nose_w + 0.1))
    nu, nv, sub = u[w] - 1.6 * su, v[w] - nose_y, img[w]
    _paint(sub, 0.3 * _soft(nu - 0.03, nv + (nose_y - eye_y) / 2, 0.025, (nose_y - eye_y) / 2, px), skin * 0.6)
    _paint(sub, 0.5 * _soft(nu, nv + 0.02, nose_w, 0.6 * nose_w, px), np.minimum(skin * 1.15, 1))
    for side in (-1, 1):
        _paint(sub, 0.8 * _soft(nu - side * 0.55 * nose_w, nv - 0.025, 0.03, 0.017, px), skin * 0.35)

    hw = s["mouth_hw"]
    w = _window(size, *lm[3:].mean(0), k * (hw + 0.15))
    mu, sub = u[w] - su, img[w]
    mv = v[w] - s["mouth_y"] - s["smile"] * 0.06 * (1 - np.minimum((mu / hw) ** 2, 1))  # a smile lowers the middle
    _paint(sub, _soft(mu, mv, hw, s["lip"] + 0.06 * s["mouth_open"], px), s["lip_colour"])
    if s["mouth_open"] > 0.05:
        _paint(sub, _soft(mu, mv, 0.8 * hw, 0.06 * s["mouth_open"], px), MOUTH_INSIDE)

    light = 1 + (s["light"][0] * (x - size / 2) + s["light"][1] * (y - size / 2)) / size
    img *= (s["gain"] * s["white"]).astype(np.float32) * light[..., None]
    mean = img.mean()
    img = mean + s["contrast"] * (img - mean)
    img += s["noise"] * np.random.default_rng(s["noise_seed"]).standard_normal(img.shape, np.float32)
    return (np.clip(img, 0, 1) * 255 + 0.5).astype(np.uint8)


def render_face(params: dict, rng: np.random.Generator, size: int) -> tuple[np.ndarray, np.ndarray]:
    """One image of the identity `params` (uint8 [size, size, 3]) and its 5 landmarks (float32 [5, 2], x, y)."""
    s = _scene(params, rng)
    return _render(s, size), _landmarks(s, size)


def _png(s: dict, size: int) -> bytes:
    """PIL, not TF: it runs in forked worker processes (write_synthetic), where TF must not be used."""
    buf = io.BytesIO()
    Image.fromarray(_render(s, size)).save(buf, format="PNG", compress_level=1)
    return buf.getvalue()


def prerender(items: list[Item], workers: int = 0) -> list[Item]:
    """The items with their PNGs rendered up front on `workers` processes (0: every core)."""
    workers = workers or os.cpu_count() or 1
    args = [it.load.args for it in items]
    if workers > 1 and len(items) >= 256:
        with multiprocessing.get_context("fork").Pool(workers) as pool:
            data = pool.starmap(_png, args, chunksize=64)
    else:
        data = [_png(*a) for a in args]
    return [dataclasses.replace(it, load=functools.partial(bytes, d)) for it, d in zip(items, data)]


def synthetic_items(num_identities: int, images_per_identity: int, image_size: int, seed: int) -> list[Item]:
    """Items that render lazily; image (identity, index) is always the same for a given seed."""
    items = []
    for i, params in enumerate(identity_params(num_identities, seed)):
        for j in range(images_per_identity):
            s = _scene(params, np.random.default_rng([seed, i, j]))
            items.append(Item(source=f"synthetic/id{i:04d}/{j:04d}.png", label=i,
                              load=functools.partial(_png, s, image_size), landmarks=_landmarks(s, image_size)))
    return items


def folder_name(num_identities: int, images_per_identity: int, image_size: int) -> str:
    """The folder a run or a benchmark generates a set of these settings into (the version in it: a folder of
    another version's faces is never taken for this one's)."""
    return f"synthetic-v{VERSION}-{num_identities}x{images_per_identity}-{image_size}px"


def write_synthetic(out_dir: str, num_identities: int = 40, images_per_identity: int = 50, image_size: int = 72,
                    seed: int = 0, **write_kwargs) -> dict:
    """Converts a synthetic set to TFRecords (see `write_dataset`); the split seed defaults to `seed`."""
    items = prerender(synthetic_items(num_identities, images_per_identity, image_size, seed))
    name = f"synthetic-faces-v{VERSION}-{num_identities}x{images_per_identity}-{image_size}px-seed{seed}"
    return write_dataset(out_dir, items, name, synthetic=True, **{"seed": seed, **write_kwargs})
