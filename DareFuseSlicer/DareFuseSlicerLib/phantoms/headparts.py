"""The head's small structures as soft layers (see head.py): orbits with eyes, lens, optic nerve,
rectus muscles and orbital fat; paranasal sinuses and nasal cavity; cervical vertebrae, discs, airway,
carotid arteries and jugular veins; the spinal cord. Positions are MNI RAS millimetres, placed around the
MNI152 brain (the eyes under the orbitofrontal cortex, the spine under the cut brainstem) and jittered
per case. Each structure is evaluated only on the points of its bounding box.
"""
from __future__ import annotations

from typing import List

import numpy as np

from .headspace import cord_centre_y
from .shapes import Layer, ellipsoid, inside, segment

SIDES = (-1.0, 1.0)
# Cervical levels: (top z, bottom z) of the vertebral bodies (C2 to C5); discs fill the gaps.
LEVELS = ((-76.0, -93.0), (-98.0, -112.0), (-117.0, -131.0), (-136.0, -150.0))


def draw_parts(rng) -> dict:
    return {
        "eye_radius": rng.uniform(11.3, 12.5), "eye_shift": rng.uniform(-1.8, 1.8, 3),
        "orbit_radius": rng.uniform(15.0, 18.0),
        "sinus": rng.uniform(0.85, 1.15, 4), "mucosa": rng.uniform(0.8, 3.0, 4),
        "body": (rng.uniform(9.0, 11.0), rng.uniform(7.5, 9.0)), "airway": (rng.uniform(7.0, 11.0), rng.uniform(4.0, 8.0)),
        "jaw": rng.uniform(0.92, 1.06), "carotid": rng.uniform(2.5, 3.5), "jugular": rng.uniform(3.5, 6.0),
    }


def _local(pts, lo, hi):
    idx = pts.box(lo, hi)
    return idx, pts.x[idx], pts.y[idx], pts.z[idx]


def _eye(parts: dict, side: float):
    shift = parts["eye_shift"] * np.array([side, 1.0, 1.0])
    centre = np.array([side * 31.5, 62.0, -44.0]) + shift
    apex = np.array([side * 14.0, 26.0, -38.0])
    return centre, apex


def _orbit(parts: dict, side: float, pts, th) -> List:
    """One orbit: bony cone, fat, four rectus muscles, optic nerve in its CSF sheath, globe and lens."""
    e, a = _eye(parts, side)
    r_e, r_o = parts["eye_radius"], parts["orbit_radius"]
    idx, x, y, z = _local(pts, np.minimum(e, a) - r_o - 4, np.maximum(e, a) + r_o + 4)
    axis = (e - a) / np.linalg.norm(e - a)
    length = float(np.linalg.norm(e - a))
    radial, t = segment(x, y, z, a, a + axis * length * 1.3)
    t = t * np.float32(1.3)
    cone = np.maximum(radial - (3 + (r_o - 3) * np.clip(t, 0, 1)), (t - 1.25) * np.float32(length))
    outside_skull = inside(th["bone_out"][idx] - pts.d_out[idx])  # the orbital roof stays cranial bone
    layers = [Layer("bone", idx, inside(np.abs(cone - 1.0) - 1.0) * (t < 1.0) * outside_skull),
              Layer("fat", idx, inside(cone) * outside_skull)]
    up, lateral = np.array([0.0, 0.0, 1.0]), np.array([side, 0.0, 0.0])
    for direction in (up, -up, lateral, -lateral):
        d, _ = segment(x, y, z, a + direction * 3, e + axis * 4 + direction * (r_e - 0.5))
        layers.append(Layer("muscle", idx, inside(d - 2.0) * outside_skull))
    d, _ = segment(x, y, z, e - axis * r_e, a - axis * 4)
    layers += [Layer("csf", idx, inside(d - 3.0) * outside_skull), Layer("nerve", idx, inside(d - 2.0) * outside_skull)]
    r = np.sqrt((x - e[0]) ** 2 + (y - e[1]) ** 2 + (z - e[2]) ** 2)
    layers += [Layer("sclera", idx, inside(r - r_e)), Layer("vitreous", idx, inside(r - (r_e - 1.0))),
               Layer("lens", idx, inside(ellipsoid(x, y, z, e + axis * (r_e - 3.6), (4.5, 2.0, 4.5))))]
    return layers


def _sinus(pts, th, centre, semi, mucosa: float, within_diploe: bool = False) -> List:
    """An air cavity lined by mucosa in a thin bony wall; it never reaches the inner table or the brain."""
    centre, semi = np.asarray(centre, float), np.asarray(semi, float)
    idx, x, y, z = _local(pts, centre - semi - 3, centre + semi + 3)
    s = ellipsoid(x, y, z, centre, semi)
    d = pts.d_out[idx]
    safe = inside(th["diploe_in"][idx] + 0.5 - d)
    if within_diploe:  # the frontal sinus lies between the tables of the frontal bone
        safe = safe * inside(d - th["diploe_out"][idx] + 0.5)
    return [Layer("bone", idx, inside(np.abs(s - 0.75) - 0.75) * safe), Layer("mucosa", idx, inside(s) * safe),
            Layer("air", idx, inside(s + mucosa) * safe)]


def face_layers(parts: dict, pts, th) -> List:
    layers = []
    for side in SIDES:
        layers += _orbit(parts, side, pts, th)
    k, m = parts["sinus"], parts["mucosa"]
    for side in SIDES:
        layers += _sinus(pts, th, (side * 27, 52, -72), (12 * k[0], 16 * k[0], 13 * k[0]), m[0])
    layers += _sinus(pts, th, (0, 52, -59), (9 * k[1], 24 * k[1], 18 * k[1]), m[1])
    layers += _sinus(pts, th, (0, 20, -50), (12 * k[2], 10 * k[2], 9 * k[2]), m[2])
    layers += _sinus(pts, th, (0, 76, 6), (12 * k[3], 5 * k[3], 9 * k[3]), min(m[3], 1.5), within_diploe=True)
    layers += _nasal_septum_and_turbinates(pts)
    layers += _mandible(parts, pts)
    return layers


def _nasal_septum_and_turbinates(pts) -> List:
    idx, x, y, z = _local(pts, (-14, 26, -80), (14, 80, -40))
    cavity = inside(ellipsoid(x, y, z, (0, 52, -59), (12, 22, 16)))
    layers = [Layer("bone", idx, inside(np.abs(x) - 0.8) * cavity)]
    for side in SIDES:
        for height, radius in ((-70.0, 4.5), (-59.0, 3.5), (-49.0, 2.5)):
            d, _ = segment(x, y, z, (side * 8.5, 32, height), (side * 8.5, 66, height + 2))
            layers.append(Layer("mucosa", idx, inside(d - radius) * cavity))
    return layers


def _mandible(parts: dict, pts) -> List:
    """Body of the mandible (a U of cortical bone holding marrow) and its two rami."""
    f = parts["jaw"]
    idx, x, y, z = _local(pts, (-60, -20, -118), (60, 80, -40))
    u = ellipsoid(x, y, z, (0, 18, -96), (46 * f, 48 * f, 40))
    body = np.maximum(np.abs(u + 9.0) - 4.0, np.maximum(np.abs(z + 96) - 9.0, -y - 4))
    for side in SIDES:
        d, _ = segment(x, y, z, (side * 39 * f, -2, -100), (side * 43 * f, -10, -50))
        body = np.minimum(body, np.maximum(d - 4.0, -(z + 100)))
    return [Layer("bone", idx, inside(body)), Layer("marrow", idx, inside(body + 1.5))]


def neck_layers(parts: dict, pts, th) -> List:
    """Vertebral bodies (marrow in a cortical rim) and discs, the airway, carotids and jugular veins."""
    bx, by = parts["body"]
    idx, x, y, z = _local(pts, (-bx - 2, -60, -160), (bx + 2, 10, -56))
    centre_y = cord_centre_y(z) + 10 + by
    radial = (np.sqrt((x / bx) ** 2 + ((y - centre_y) / by) ** 2) - 1) * np.float32(by)
    body = np.full(len(idx), np.float32(1e3))
    for top, bottom in LEVELS:
        body = np.minimum(body, np.maximum(radial, np.maximum(z - top, bottom - z)))
    dens = np.maximum((np.sqrt(x ** 2 + (y - centre_y) ** 2) - 5.0), np.maximum(z + 60, -80 - z))
    body = np.minimum(body, dens)
    disc = np.maximum(radial, np.maximum(z - LEVELS[0][1], LEVELS[-1][0] - z))
    layers = [Layer("disc", idx, inside(disc)), Layer("bone", idx, inside(body)), Layer("marrow", idx, inside(body + 1.2))]
    ax, ay = parts["airway"]
    idx, x, y, z = _local(pts, (-ax - 14, -40, -160), (ax + 14, 40, -40))
    airway_y = cord_centre_y(np.minimum(z, -64)) + 10 + 2 * by + 4 + ay
    tube = np.maximum((np.sqrt((x / ax) ** 2 + ((y - airway_y) / ay) ** 2) - 1) * np.float32(min(ax, ay)), z + 58)
    tube = np.minimum(tube, ellipsoid(x, y, z, (0, 12, -58), (12, 20, 8)))
    layers += [Layer("mucosa", idx, inside(tube - 1.0)), Layer("air", idx, inside(tube))]
    for side in SIDES:
        idx, x, y, z = _local(pts, (side * 30 - 12, -35, -160), (side * 30 + 12, 22, -55))
        d, _ = segment(x, y, z, (side * 19, 8, -160), (side * 21, 12, -62))
        layers.append(Layer("vessel", idx, inside(d - parts["carotid"])))
        d, _ = segment(x, y, z, (side * 27, -6, -160), (side * 31, -18, -68))
        layers.append(Layer("vessel", idx, inside(d - parts["jugular"])))
    return layers


def cord_layers(parts: dict, pts) -> List:
    idx, x, y, z = _local(pts, (-8, -60, -160), (8, -25, -60))
    s = (np.sqrt((x / 4.5) ** 2 + ((y - cord_centre_y(z)) / 3.8) ** 2) - 1) * np.float32(3.8)
    return [Layer("nerve", idx, inside(s) * inside(z + 64))]
