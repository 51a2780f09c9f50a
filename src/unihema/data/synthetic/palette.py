"""How the synthetic smear looks: the stain colours (RGB, 0..255) of the background, red cells, malaria
ring stages, platelets and white-cell cytoplasm, chromatin, nucleoli, vacuoles and granules; the texture
amplitudes and granule tables the white-cell attributes select; and the cell sizes, given in pixels at
the reference red-cell radius :data:`REFERENCE_RBC_RADIUS` and scaled with
:attr:`~unihema.data.synthetic.config.SyntheticConfig.rbc_radius`."""

from __future__ import annotations

import numpy as np

REFERENCE_RBC_RADIUS = 10.0  # every size constant below is in pixels at this red-cell radius

# White-cell radius (big, small) at the reference scale; ~20% apart so `cell_size` is visible.
WBC_RADIUS: dict[str, tuple[float, float]] = {
    "neutrophil": (17.0, 14.0),
    "lymphocyte": (13.5, 11.0),
    "monocyte": (20.5, 17.0),
    "eosinophil": (17.5, 14.5),
    "basophil": (15.5, 12.8),
}
RADIUS_JITTER = 0.04  # relative, uniform +-

# --- colours (RGB, 0..255) ------------------------------------------------------------------------
BACKGROUND = np.array([236.0, 225.0, 228.0], np.float32)
RBC_BODY = np.array([214.0, 128.0, 134.0], np.float32)
RBC_PALLOR = np.array([236.0, 196.0, 198.0], np.float32)
RBC_RIM = np.array([192.0, 104.0, 114.0], np.float32)
SICKLE_BODY = np.array([200.0, 106.0, 116.0], np.float32)
RING_CYTOPLASM = np.array([92.0, 74.0, 168.0], np.float32)
RING_CHROMATIN = np.array([128.0, 24.0, 84.0], np.float32)
PLATELET_BODY = np.array([176.0, 136.0, 204.0], np.float32)
PLATELET_GRANULOMERE = np.array([112.0, 62.0, 146.0], np.float32)
CYTOPLASM_COLOUR: dict[str, np.ndarray] = {
    "light blue": np.array([206.0, 218.0, 236.0], np.float32),
    "blue": np.array([146.0, 170.0, 226.0], np.float32),
    "purple blue": np.array([168.0, 146.0, 214.0], np.float32),
}
MONOCYTE_GREY = np.array([188.0, 188.0, 196.0], np.float32)  # monocytes' dull grey-blue tint
MONOCYTE_GREY_MIX = 0.3
CHROMATIN_COLOUR: dict[str, np.ndarray] = {
    "densely": np.array([84.0, 42.0, 122.0], np.float32),
    "loosely": np.array([116.0, 72.0, 156.0], np.float32),
}
NUCLEOLUS_COLOUR = np.array([176.0, 158.0, 212.0], np.float32)
VACUOLE_COLOUR = np.array([242.0, 240.0, 250.0], np.float32)
GRANULE_COLOUR: dict[str, np.ndarray] = {
    "pink": np.array([216.0, 132.0, 186.0], np.float32),
    "red": np.array([226.0, 92.0, 62.0], np.float32),
    "purple": np.array([64.0, 24.0, 96.0], np.float32),
}

# Texture (amplitude in grey levels, smoothing sigma in reference pixels).
CHROMATIN_TEXTURE: dict[str, tuple[float, float]] = {"densely": (22.0, 1.2), "loosely": (9.0, 0.6)}
CYTOPLASM_TEXTURE: dict[str, tuple[float, float]] = {"frosted": (10.0, 0.7), "clear": (2.5, 1.0)}

# Granules: (count per pixel of cytoplasm, radius in reference pixels, drawn over the nucleus too?,
# opacity). Fine neutrophil granules tint the cytoplasm; eosinophil granules pack it; basophil granules
# are coarse and hide the nucleus.
GRANULES: dict[str, tuple[float, float, bool, float]] = {
    "small": (0.45, 0.6, False, 0.55),
    "round": (0.32, 1.3, False, 0.9),
    "coarse": (0.10, 2.0, True, 0.92),
}
