"""data_pipelines.load_image / image_size on DICOM, PNG and JPEG files written here, corrupt files, and the
real chest CR DICOM shipped in the pydicom-data 1.0.0 wheel (downloaded to a cache, never installed)."""

from __future__ import annotations

import numpy as np
import pydicom
import pytest
from helpers.real_formats import PYDICOM_DATA, fetch_wheel, wheel_member, write_dicom, write_jpeg, write_png
from PIL import Image
from pydicom.pixels import apply_modality_lut, apply_voi_lut

from data_pipelines.image_io import ImageReadError, image_size, load_image

H, W = 12, 17


def _stored(bits: int, signed: bool, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    if signed:
        return rng.integers(-(2 ** (bits - 1)), 2 ** (bits - 1), (H, W)).astype(np.int16)
    return rng.integers(0, 2**bits, (H, W)).astype(np.uint16)


def _pydicom_reference(path) -> np.ndarray:
    """pydicom's modality LUT + windowing mapped to [0, 1] with the output range its docs state; a plain
    table lookup for VOI LUT sequences; min-max of the modality values without VOI; inverted for MONOCHROME1."""
    ds = pydicom.dcmread(path)
    values = apply_modality_lut(ds.pixel_array, ds).astype(np.float64)
    if "VOILUTSequence" in ds:  # plain table lookup (PS3.3 C.11.2.1.1): clamp below first / above last entry
        item = ds.VOILUTSequence[0]
        entries, first, bits = item.LUTDescriptor
        raw = item.LUTData
        table = (np.frombuffer(raw, "<u2") if isinstance(raw, bytes) else np.asarray(raw)).astype(np.float64)
        index = np.clip(np.rint(values).astype(np.int64) - first, 0, (entries or 65536) - 1)
        out = table[index] / (2.0**bits - 1)
    elif "WindowCenter" in ds:
        if ds.PixelRepresentation == 0:
            lo, hi = 0.0, 2.0**ds.BitsStored - 1
        else:
            lo, hi = -(2.0 ** (ds.BitsStored - 1)), 2.0 ** (ds.BitsStored - 1) - 1
        if "RescaleSlope" in ds:
            lo, hi = lo * ds.RescaleSlope + ds.RescaleIntercept, hi * ds.RescaleSlope + ds.RescaleIntercept
        out = (apply_voi_lut(values, ds) - lo) / (hi - lo)
    else:
        out = (values - values.min()) / (values.max() - values.min())
    return 1.0 - out if ds.PhotometricInterpretation == "MONOCHROME1" else out


DICOM_CASES = {
    "m2_16bit_plain": dict(photometric="MONOCHROME2", bits_stored=16),
    "m1_12bit_rescale": dict(photometric="MONOCHROME1", bits_stored=12, rescale=(2.0, -1000.0)),
    "m2_12bit_window": dict(photometric="MONOCHROME2", bits_stored=12, window=(2048.0, 1500.0)),
    "m1_15bit_window_rescale": dict(
        photometric="MONOCHROME1", bits_stored=15, window=(300.0, 9000.0), rescale=(0.5, -4000.0)
    ),
    "m2_16bit_linear_exact": dict(
        photometric="MONOCHROME2", bits_stored=16, window=(30000.0, 20000.0), voi_function="LINEAR_EXACT"
    ),
    "m2_12bit_sigmoid": dict(
        photometric="MONOCHROME2", bits_stored=12, window=(1800.0, 1200.0), voi_function="SIGMOID"
    ),
    "m2_12bit_signed_window": dict(photometric="MONOCHROME2", bits_stored=12, signed=True, window=(0.0, 2000.0)),
    "m1_12bit_voi_lut_over_window": dict(
        photometric="MONOCHROME1",
        bits_stored=12,
        window=(10.0, 20.0),
        voi_lut=([4096, 0, 16], [int(65535 * (i / 4095) ** 0.5) for i in range(4096)]),
    ),
    "m2_12bit_voi_lut_ow": dict(
        photometric="MONOCHROME2",
        bits_stored=12,
        lut_vr="OW",
        voi_lut=([2048, 1000, 12], [(7 * i) % 4096 for i in range(2048)]),
    ),
    "m2_16bit_voi_lut_offset": dict(
        photometric="MONOCHROME2", bits_stored=16, voi_lut=([256, 30000, 8], list(range(256)))
    ),
}


@pytest.mark.parametrize("name", sorted(DICOM_CASES))
def test_dicom_matches_pydicom_reference(tmp_path, name):
    kwargs = dict(DICOM_CASES[name])
    signed = kwargs.pop("signed", False)
    stored = _stored(kwargs["bits_stored"], signed, seed=len(name))
    path = write_dicom(tmp_path / f"{name}.dcm", stored, **kwargs)
    image = load_image(path)
    assert image.dtype == np.float32 and image.shape == (H, W)
    assert image.min() >= 0.0 and image.max() <= 1.0
    np.testing.assert_allclose(image, _pydicom_reference(path), atol=1e-6)


def test_linear_window_against_standard_pseudocode(tmp_path):
    """PS3.3 C.11.2.1.2.1 written out per pixel, independent of pydicom."""
    stored = _stored(12, False, seed=3)
    c, w = 1000.0, 801.0
    path = write_dicom(tmp_path / "w.dcm", stored, bits_stored=12, window=(c, w))
    expected = np.empty(stored.shape)
    for idx, x in np.ndenumerate(stored.astype(float)):
        if x <= c - 0.5 - (w - 1) / 2:
            expected[idx] = 0.0
        elif x > c - 0.5 + (w - 1) / 2:
            expected[idx] = 1.0
        else:
            expected[idx] = (x - (c - 0.5)) / (w - 1) + 0.5
    np.testing.assert_allclose(load_image(path), expected, atol=1e-6)


def test_multi_valued_window_uses_the_first(tmp_path):
    stored = _stored(12, False, seed=4)
    first = write_dicom(tmp_path / "a.dcm", stored, bits_stored=12, window=(1000.0, 500.0))
    multi = write_dicom(tmp_path / "b.dcm", stored, bits_stored=12, window=([1000.0, 3000.0], [500.0, 90.0]))
    np.testing.assert_array_equal(load_image(first), load_image(multi))


def test_monochrome1_is_inverted_so_bone_is_bright(tmp_path):
    bone = np.zeros((H, W), bool)
    bone[:, 7:10] = True  # a "spine" band
    attenuation = np.where(bone, 3500, 800).astype(np.uint16) + _stored(6, False, seed=5)
    m2 = write_dicom(tmp_path / "m2.dcm", attenuation, photometric="MONOCHROME2", bits_stored=12)
    m1 = write_dicom(
        tmp_path / "m1.dcm", (4095 - attenuation).astype(np.uint16), photometric="MONOCHROME1", bits_stored=12
    )
    for path in (m1, m2):
        image = load_image(path)
        assert image[bone].min() > image[~bone].max()
    np.testing.assert_allclose(load_image(m1), load_image(m2), atol=1e-6)


# -------------------------------------------------------------------------------------------- PNG / JPEG


def test_png_8_and_16_bit_keep_absolute_scale(tmp_path):
    rng = np.random.default_rng(0)
    g8 = rng.integers(0, 256, (H, W), dtype=np.uint8)
    g16 = rng.integers(0, 65536, (H, W)).astype(np.uint16)
    np.testing.assert_array_equal(load_image(write_png(tmp_path / "g8.png", g8)), (g8 / 255.0).astype(np.float32))
    path16 = write_png(tmp_path / "g16.png", g16)
    assert Image.open(path16).mode.startswith("I;16")  # really a 16-bit PNG
    np.testing.assert_allclose(load_image(path16), g16 / 65535.0, atol=1e-7)


def test_color_png_is_reduced_to_luma_and_alpha_ignored(tmp_path):
    rng = np.random.default_rng(1)
    rgb = rng.integers(0, 256, (H, W, 3), dtype=np.uint8)
    rgba = np.concatenate([rgb, rng.integers(0, 256, (H, W, 1), dtype=np.uint8)], axis=-1)
    from_rgb = load_image(write_png(tmp_path / "c.png", rgb))
    pil_luma = np.asarray(Image.fromarray(rgb).convert("L"), dtype=np.float64) / 255.0
    np.testing.assert_allclose(from_rgb, pil_luma, atol=0.5 / 255 + 1e-6)  # Pillow rounds to integers
    np.testing.assert_array_equal(load_image(write_png(tmp_path / "c4.png", rgba, mode="RGBA")), from_rgb)
    gray = rng.integers(0, 256, (H, W), dtype=np.uint8)  # ChestX-ray14's few RGBA files are gray + opaque alpha
    gray_rgba = np.stack([gray, gray, gray, np.full_like(gray, 255)], axis=-1)
    np.testing.assert_allclose(
        load_image(write_png(tmp_path / "g4.png", gray_rgba, mode="RGBA")), gray / 255.0, atol=1e-6
    )
    la = np.stack([gray, np.full_like(gray, 7)], axis=-1)
    np.testing.assert_allclose(load_image(write_png(tmp_path / "la.png", la, mode="LA")), gray / 255.0, atol=1e-7)


def test_palette_and_bilevel_png(tmp_path):
    rng = np.random.default_rng(2)
    rgb = rng.integers(0, 256, (H, W, 3), dtype=np.uint8)
    p_path = tmp_path / "p.png"
    Image.fromarray(rgb).quantize(16).save(p_path)
    expected = np.asarray(Image.open(p_path).convert("RGB"), dtype=np.float64) / 255.0 @ [0.299, 0.587, 0.114]
    np.testing.assert_allclose(load_image(p_path), expected, atol=1e-6)
    bits = rng.integers(0, 2, (H, W)).astype(bool)
    b_path = tmp_path / "b.png"
    Image.fromarray(bits).save(b_path)
    np.testing.assert_array_equal(load_image(b_path), bits.astype(np.float32))


def test_jpeg_matches_pillow_decode(tmp_path):
    g = np.random.default_rng(3).integers(0, 256, (H, W), dtype=np.uint8)
    path = write_jpeg(tmp_path / "g.jpg", g)
    np.testing.assert_array_equal(load_image(path), np.asarray(Image.open(path), dtype=np.float32) / 255.0)
    assert image_size(path) == (W, H)


def test_image_size_reads_headers_only(tmp_path):
    stored = _stored(12, False, seed=6)
    no_pixels = write_dicom(tmp_path / "header_only.dcm", stored, bits_stored=12, with_pixels=False)
    assert image_size(no_pixels) == (W, H)
    with pytest.raises(ImageReadError, match="no pixel data"):
        load_image(no_pixels)
    assert image_size(write_png(tmp_path / "x.png", np.zeros((5, 9), np.uint8))) == (9, 5)


# ---------------------------------------------------------------------------------------------- failures


def _corrupt_files(tmp_path):
    good_png = write_png(tmp_path / "good.png", np.random.default_rng(0).integers(0, 256, (64, 64), dtype=np.uint8))
    truncated_png = tmp_path / "truncated.png"
    truncated_png.write_bytes(good_png.read_bytes()[: len(good_png.read_bytes()) // 2])
    good_dcm = write_dicom(tmp_path / "good.dcm", _stored(12, False, 7), bits_stored=12)
    truncated_dcm = tmp_path / "truncated.dcm"
    truncated_dcm.write_bytes(good_dcm.read_bytes()[:-100])
    rgb_dcm = tmp_path / "rgb.dcm"
    ds = pydicom.dcmread(good_dcm)
    ds.set_pixel_data(np.zeros((4, 4, 3), np.uint8), "RGB", 8)
    ds.save_as(rgb_dcm)
    multi_frame = write_dicom(tmp_path / "frames.dcm", _stored(12, False, 8)[None].repeat(2, axis=0), bits_stored=12)
    garbage = tmp_path / "garbage.png"
    garbage.write_bytes(b"\x89PNG not really" + bytes(range(200)))
    (tmp_path / "empty.jpg").write_bytes(b"")
    (tmp_path / "noise.dcm").write_bytes(bytes(np.random.default_rng(1).integers(0, 256, 500, dtype=np.uint8)))
    return {
        "missing": (tmp_path / "nope.png", "file not found"),
        "truncated_png": (truncated_png, ""),
        "truncated_dicom": (truncated_dcm, ""),
        "rgb_dicom": (rgb_dcm, "PhotometricInterpretation RGB"),
        "multi_frame_dicom": (multi_frame, "multi-frame"),
        "garbage_png": (garbage, ""),
        "empty_jpeg": (tmp_path / "empty.jpg", ""),
        "noise_dicom": (tmp_path / "noise.dcm", ""),
    }


def test_unreadable_files_raise_one_line_errors_naming_the_path(tmp_path):
    for case, (path, reason) in _corrupt_files(tmp_path).items():
        with pytest.raises(ImageReadError) as info:
            load_image(path)
        message = str(info.value)
        assert isinstance(info.value, ValueError), case
        assert str(path) in message and "\n" not in message, (case, message)
        assert reason in message, (case, message)
        assert info.value.reason, case
    with pytest.raises(ImageReadError, match="file not found"):
        image_size(tmp_path / "nope.dcm")


# ---------------------------------------------------------------------------------------- real CR DICOM


@pytest.fixture(scope="session")
def pydicom_data_wheel():
    wheel, reason = fetch_wheel("pydicom-data")
    if wheel is None:
        pytest.skip(reason)
    return wheel


def test_real_chest_cr_dicom(pydicom_data_wheel):
    """pydicom-data's RG1_UNCR: real adult PA chest CR, MONOCHROME1, 15 of 16 bits, window 15000/30000."""
    path = wheel_member(pydicom_data_wheel, PYDICOM_DATA + "RG1_UNCR.dcm")
    header = pydicom.dcmread(path, stop_before_pixels=True)
    assert header.PhotometricInterpretation == "MONOCHROME1" and header.BitsStored == 15
    image = load_image(path)
    assert image.shape == (header.Rows, header.Columns)
    assert image_size(path) == (header.Columns, header.Rows)
    np.testing.assert_allclose(image, _pydicom_reference(path), atol=1e-6)
    # Bone bright: the mediastinum / spine column is brighter than both lung fields on this PA film.
    h, w = image.shape
    rows = slice(int(0.3 * h), int(0.6 * h))
    centre = image[rows, int(0.45 * w) : int(0.55 * w)].mean()
    lungs = image[rows, int(0.2 * w) : int(0.32 * w)].mean(), image[rows, int(0.68 * w) : int(0.8 * w)].mean()
    assert centre > max(lungs) + 0.1, (centre, lungs)
    # The JPEG 2000 lossless copy of the same radiograph decodes to the same array.
    np.testing.assert_array_equal(load_image(wheel_member(pydicom_data_wheel, PYDICOM_DATA + "RG1_J2KR.dcm")), image)
