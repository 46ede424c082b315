"""The one image reader: DICOM, PNG and JPEG -> 2-D float32 in [0, 1], bone bright.

DICOM (PS3.3 C.11): stored values -> Modality LUT / rescale -> VOI LUT (LUT sequence preferred, else
window centre/width with LINEAR, LINEAR_EXACT or SIGMOID) -> [0, 1]; without any VOI the image is min-max
scaled. MONOCHROME1 is inverted last so bone is always bright.
PNG/JPEG: integer images are divided by their dtype maximum (255 or 65535), so 8- and 16-bit files keep
their absolute scale; colour is reduced to luma (ITU-R 601, as Pillow's "L"), alpha is ignored.
"""

from __future__ import annotations

import io
import os
from typing import Any, BinaryIO

import numpy as np
import pydicom
from PIL import Image
from pydicom.pixels import apply_modality_lut

_DICOM_SUFFIXES = (".dcm", ".dicom", ".dic")
_LUMA_601 = np.array([0.299, 0.587, 0.114], dtype=np.float64)


class ImageReadError(ValueError):
    """An image that is missing, unreadable or corrupt; the message names the path and the reason."""

    def __init__(self, path: Any, reason: Any):
        self.path = str(path)
        self.reason = " ".join(str(reason).split())  # one line
        super().__init__(f"cannot read image {self.path}: {self.reason}")


# ----------------------------------------------------------------------------------------------- public


def load_image(path: str | os.PathLike) -> np.ndarray:
    """Reads a DICOM, PNG or JPEG file as a [H, W] float32 array in [0, 1] with bone bright."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise ImageReadError(path, "file not found")
    try:
        with open(path, "rb") as f:
            return _decode(f, path)
    except ImageReadError:
        raise
    except Exception as e:
        raise ImageReadError(path, f"{type(e).__name__}: {e}") from e


def decode_image_bytes(data: bytes, name: str = "<bytes>") -> np.ndarray:
    """Same as load_image for an encoded file held in memory (e.g. a parquet image cell)."""
    try:
        return _decode(io.BytesIO(data), name)
    except ImageReadError:
        raise
    except Exception as e:
        raise ImageReadError(name, f"{type(e).__name__}: {e}") from e


def image_size(path: str | os.PathLike) -> tuple[int, int]:
    """(width, height) of an image file, from its header only (pixels are not decoded)."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise ImageReadError(path, "file not found")
    try:
        with open(path, "rb") as f:
            if _is_dicom(f, path):
                ds = pydicom.dcmread(f, stop_before_pixels=True)
                if "Rows" not in ds or "Columns" not in ds:
                    raise ImageReadError(path, "DICOM has no Rows/Columns")
                return int(ds.Columns), int(ds.Rows)

            with Image.open(f) as im:
                return tuple(int(v) for v in im.size)  # type: ignore[return-value]
    except ImageReadError:
        raise
    except Exception as e:
        raise ImageReadError(path, f"{type(e).__name__}: {e}") from e


# ------------------------------------------------------------------------------------------------ decode


def _is_dicom(f: BinaryIO, name: str) -> bool:
    pos = f.tell()
    head = f.read(132)
    f.seek(pos)
    return head[128:132] == b"DICM" or name.lower().endswith(_DICOM_SUFFIXES)


def _decode(f: BinaryIO, name: str) -> np.ndarray:
    image = _decode_dicom(f, name) if _is_dicom(f, name) else _decode_pil(f, name)
    if image.ndim != 2 or image.size == 0:
        raise ImageReadError(name, f"expected a 2-D image, got shape {image.shape}")
    if not np.all(np.isfinite(image)):
        raise ImageReadError(name, "image has non-finite values")
    return np.clip(image, 0.0, 1.0).astype(np.float32)


def _decode_pil(f: BinaryIO, name: str) -> np.ndarray:
    with Image.open(f) as im:
        im.load()  # truncated or corrupt data fails here
        mode = im.mode
        if mode == "P" or mode == "PA":
            im = im.convert("RGBA" if "transparency" in im.info or mode == "PA" else "RGB")
            mode = im.mode
        arr = np.asarray(im)
    if mode == "1":
        return arr.astype(np.float64)
    if mode == "F":
        return _minmax(arr.astype(np.float64))
    if mode == "I":  # 32-bit integer container; 16-bit PNGs may land here on older Pillow
        arr = arr.astype(np.int64)
        if arr.min() < 0 or arr.max() > 65535:
            return _minmax(arr.astype(np.float64))
        return arr / 65535.0
    if arr.dtype == np.uint16 or mode.startswith("I;16"):
        gray = arr.astype(np.float64) / 65535.0
    elif arr.dtype == np.uint8:
        gray = arr.astype(np.float64) / 255.0
    else:
        raise ImageReadError(name, f"unsupported image mode {mode!r} with dtype {arr.dtype}")
    if gray.ndim == 3:
        if mode in ("LA", "La"):
            gray = gray[..., 0]
        elif mode in ("RGB", "RGBA", "RGBa", "RGBX"):
            gray = gray[..., :3] @ _LUMA_601
        elif mode == "CMYK":
            raise ImageReadError(name, "CMYK images are not supported")
        else:
            raise ImageReadError(name, f"unsupported image mode {mode!r}")
    return gray


def _decode_dicom(f: BinaryIO, name: str) -> np.ndarray:
    ds = pydicom.dcmread(f)
    if "PixelData" not in ds and "FloatPixelData" not in ds and "DoubleFloatPixelData" not in ds:
        raise ImageReadError(name, "DICOM has no pixel data")
    photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2")).upper()
    if photometric not in ("MONOCHROME1", "MONOCHROME2"):
        raise ImageReadError(name, f"PhotometricInterpretation {photometric} is not a grayscale X-ray")
    if int(ds.get("NumberOfFrames", 1) or 1) > 1:
        raise ImageReadError(name, f"multi-frame DICOM ({ds.NumberOfFrames} frames) is not a single radiograph")
    stored = ds.pixel_array  # BitsStored masking and sign handled by pydicom
    values = np.asarray(apply_modality_lut(stored, ds), dtype=np.float64)
    voi = voi_to_unit(values, ds)
    image = _minmax(values) if voi is None else voi
    if photometric == "MONOCHROME1":
        image = 1.0 - image
    return image


def voi_to_unit(values: np.ndarray, ds: Any, index: int = 0) -> np.ndarray | None:
    """Applies the dataset's VOI transform to modality values; returns [0, 1] floats or None if no VOI.

    A VOI LUT Sequence wins over window centre/width (as in pydicom's apply_voi_lut default). Inputs below the
    first mapped value take the first entry, inputs past the table the last (PS3.3 C.11.2.1.1). The LUT output
    range is [0, 2**bits - 1] with bits from LUTDescriptor[2] (widened if the data exceed it).
    """
    lut_seq = ds.get("VOILUTSequence")
    if lut_seq:
        item = lut_seq[index]
        entries, first, bits = (int(v) for v in item.LUTDescriptor)
        table = _lut_table(item, ds)
        # Own lookup: pydicom 3.0's apply_voi builds its index array in the LUT's output dtype, so inputs more
        # than 255 (8-bit LUT) above the first mapped value wrap around instead of clamping to the last entry.
        position = np.clip(np.rint(values).astype(np.int64) - first, 0, (entries or 65536) - 1)
        position = np.minimum(position, table.size - 1)
        top = max(2.0**bits - 1.0, float(table.max()))
        return table[position] / top
    if "WindowCenter" in ds and "WindowWidth" in ds:
        center = _multi_value(ds["WindowCenter"].value, index)
        width = _multi_value(ds["WindowWidth"].value, index)
        function = str(ds.get("VOILUTFunction", "LINEAR") or "LINEAR").upper()
        return window_to_unit(values, center, width, function)
    return None


def window_to_unit(values: np.ndarray, center: float, width: float, function: str = "LINEAR") -> np.ndarray:
    """DICOM PS3.3 C.11.2.1.2-3 windowing with output range [0, 1]."""
    x = np.asarray(values, dtype=np.float64)
    if function == "LINEAR":
        if width < 1:
            raise ValueError(f"LINEAR window width must be >= 1, got {width}")
        c, w = center - 0.5, width - 1.0
        if w == 0:  # width 1: a pure threshold at c
            return (x > c).astype(np.float64)
        return np.where(x <= c - w / 2, 0.0, np.where(x > c + w / 2, 1.0, (x - c) / w + 0.5))
    if function == "LINEAR_EXACT":
        if width <= 0:
            raise ValueError(f"LINEAR_EXACT window width must be > 0, got {width}")
        return np.where(x <= center - width / 2, 0.0, np.where(x > center + width / 2, 1.0, (x - center) / width + 0.5))
    if function == "SIGMOID":
        if width <= 0:
            raise ValueError(f"SIGMOID window width must be > 0, got {width}")
        return 1.0 / (1.0 + np.exp(-4.0 * (x - center) / width))
    raise ValueError(f"unknown VOILUTFunction {function!r}")


def _lut_table(item: Any, ds: Any) -> np.ndarray:
    """LUT Data as float64 entries (VR US: a list; VR OW: 16-bit words in the file's byte order)."""
    value = item.LUTData
    if isinstance(value, (bytes, bytearray)):
        tsyntax = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
        little = tsyntax.is_little_endian if tsyntax is not None else True
        return np.frombuffer(value, dtype="<u2" if little else ">u2").astype(np.float64)
    return np.asarray(
        value if isinstance(value, (list, tuple)) or hasattr(value, "__len__") else [value], dtype=np.float64
    ).ravel()


def _multi_value(value: Any, index: int) -> float:
    if isinstance(value, (list, tuple)) or type(value).__name__ == "MultiValue":
        return float(value[index])
    return float(value)


def _minmax(x: np.ndarray) -> np.ndarray:
    lo, hi = float(np.min(x)), float(np.max(x))
    if hi <= lo:
        return np.zeros_like(x, dtype=np.float64)
    return (x - lo) / (hi - lo)
