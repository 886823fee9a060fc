"""RAD-DINO image processor and chest X-ray image/DICOM reader.

This file is self-contained on purpose: the Hugging Face Hub copies it alone next to a checkpoint for
``trust_remote_code=True``, so it imports only numpy, PIL, torch (indirectly, via transformers) and
transformers. pydicom is imported lazily, only when a DICOM input is met.

Public API
----------
- :class:`UnreadableImageError` -- the one exception raised for any input that cannot be read as an image.
- :func:`read_image` -- path / bytes / PIL image / numpy array / ``pydicom.Dataset`` -> 2-D grey or HxWx3 array,
  keeping the native bit depth (16-bit stays 16-bit; DICOM comes out as float32 after its LUTs).
- :func:`to_uint8` -- RAD-DINO's min-max scaling of grey values to [0, 255] (uint8).
- :class:`RadDinoImageProcessor` -- ``BitImageProcessor`` (PIL backend) with the released ``microsoft/rad-dino``
  settings; bit-identical to it on 8-bit images, and additionally accepts paths, bytes, 16-bit images and DICOM.

Saved configuration (decision)
------------------------------
``save_pretrained`` writes ``"image_processor_type": "BitImageProcessor"`` (as the ``microsoft/rad-dino`` release
does) **plus** ``"auto_map": {"AutoImageProcessor": {"pil": "image_processing_rad_dino.RadDinoImageProcessor"}}``
and a copy of this file. Therefore:

- ``AutoImageProcessor.from_pretrained(dir)`` (no remote code) loads the stock ``BitImageProcessor`` with the same
  settings: identical outputs on 8-bit images, no DICOM / 16-bit support, no custom code executed.
- ``AutoImageProcessor.from_pretrained(dir, trust_remote_code=True)`` loads this ``RadDinoImageProcessor``.
- ``pipeline("image-feature-extraction", model=dir)`` is silent and stock. The pipeline also asks
  ``AutoVideoProcessor`` for a video processor; for a *string* ``AutoImageProcessor`` entry it guesses a remote
  ``...VideoProcessor`` class of the same name, finds no local one and asks interactively whether to run custom
  code. The per-backend mapping (this processor is the PIL backend) is the transformers 5 form of the entry and
  names no video processor, so nothing is guessed and the pipeline loads without asking.

Saving ``"RadDinoImageProcessor"`` as the type would make plain loading fail, since transformers does not know
that name.
"""

from __future__ import annotations

import io
import os
import re
from pathlib import Path
from typing import Any

import numpy as np
import PIL.Image
import PIL.ImageOps
from transformers import BitImageProcessorPil
from transformers.image_utils import PILImageResampling

__all__ = [
    "MIN_IMAGE_SIDE",
    "RAD_DINO_IMAGE_MEAN",
    "RAD_DINO_IMAGE_STD",
    "RadDinoImageProcessor",
    "UnreadableImageError",
    "read_image",
    "to_uint8",
]

#: Smallest accepted image side in pixels: one ViT-B/14 patch. Smaller images carry no usable content and are
#: rejected by :func:`read_image` (a 1x1 or 13x13 "image" is almost surely a broken file or a placeholder).
MIN_IMAGE_SIDE = 14

#: Normalisation constants of the released ``microsoft/rad-dino`` preprocessor_config.json (grey values / 255).
RAD_DINO_IMAGE_MEAN = [0.5307, 0.5307, 0.5307]
RAD_DINO_IMAGE_STD = [0.2583, 0.2583, 0.2583]

_DICOM_MAGIC_OFFSET = 128
_DICOM_MAGIC = b"DICM"

# PIL modes that hold at most 8 bits per channel: the stock BitImageProcessor handles them as they are.
_EIGHT_BIT_PIL_MODES = {"1", "L", "LA", "La", "P", "PA", "RGB", "RGBA", "RGBa", "RGBX", "CMYK", "YCbCr", "LAB", "HSV"}

# Package hints for compressed DICOM transfer syntaxes whose decoder is missing (UID prefix -> pip command).
# These follow pydicom 3's decoder plugin table ("pylibjpeg" plugin requirements).
_DICOM_DECODER_HINTS = (
    # JPEG 2000 (lossless / lossy / multi-component) and High-Throughput JPEG 2000
    (
        (
            "1.2.840.10008.1.2.4.90",
            "1.2.840.10008.1.2.4.91",
            "1.2.840.10008.1.2.4.92",
            "1.2.840.10008.1.2.4.93",
            "1.2.840.10008.1.2.4.201",
            "1.2.840.10008.1.2.4.202",
            "1.2.840.10008.1.2.4.203",
        ),
        "pip install pylibjpeg pylibjpeg-openjpeg",
    ),
    # JPEG-LS lossless / near-lossless
    (
        ("1.2.840.10008.1.2.4.80", "1.2.840.10008.1.2.4.81"),
        "pip install pylibjpeg pylibjpeg-libjpeg  (or: pip install pyjpegls)",
    ),
    # JPEG baseline / extended / lossless (process 14, SV1)
    (
        ("1.2.840.10008.1.2.4.50", "1.2.840.10008.1.2.4.51", "1.2.840.10008.1.2.4.57", "1.2.840.10008.1.2.4.70"),
        "pip install pylibjpeg pylibjpeg-libjpeg",
    ),
    # RLE lossless
    (("1.2.840.10008.1.2.5",), "pip install pylibjpeg pylibjpeg-rle"),
)


class UnreadableImageError(ValueError):
    """Raised when an input cannot be read as an image.

    The message always names the offending file (its path, or the ``name`` given to :func:`read_image`, or a
    placeholder such as ``<bytes>`` for anonymous inputs) and says why, e.g. empty file, truncated data, not an
    image, too small, DICOM without pixel data, or a missing DICOM decoder together with the ``pip install``
    command that fixes it.
    """


# --------------------------------------------------------------------------------------------------------------
# Reading
# --------------------------------------------------------------------------------------------------------------


def _describe(source: Any, name: str | None) -> str:
    """Return the label used for ``source`` in error messages."""
    if name is not None:
        return str(name)
    if isinstance(source, (str, os.PathLike)):
        return os.fspath(source)
    if isinstance(source, (bytes, bytearray, memoryview)):
        return "<bytes>"
    if isinstance(source, PIL.Image.Image):
        filename = getattr(source, "filename", None)
        return str(filename) if filename else "<PIL image>"
    if isinstance(source, np.ndarray):
        return "<numpy array>"
    filename = getattr(source, "filename", None)
    if filename and isinstance(filename, (str, os.PathLike)):
        return os.fspath(filename)
    return f"<{type(source).__name__}>"


def _is_dicom_dataset(obj: Any) -> bool:
    """True for a ``pydicom.Dataset`` (checked without importing pydicom)."""
    return any(cls.__name__ == "Dataset" and cls.__module__.startswith("pydicom") for cls in type(obj).__mro__)


def _import_pydicom(label: str):
    """Import pydicom lazily; raise :class:`UnreadableImageError` naming ``label`` if it is not installed."""
    # The try/except keeps transformers' remote-code import checker from requiring pydicom.
    try:
        import pydicom
        import pydicom.pixels  # noqa: F401  (apply_modality_lut / apply_voi_lut live here)
    except ImportError as err:
        raise UnreadableImageError(
            f"{label}: reading DICOM needs pydicom, which is not installed (pip install pydicom)"
        ) from err
    return pydicom


def _check_size(array: np.ndarray, label: str) -> np.ndarray:
    """Reject images with a side shorter than :data:`MIN_IMAGE_SIDE` pixels."""
    height, width = array.shape[:2]
    if height < MIN_IMAGE_SIDE or width < MIN_IMAGE_SIDE:
        raise UnreadableImageError(
            f"{label}: image is too small ({width}x{height} px); at least {MIN_IMAGE_SIDE}x{MIN_IMAGE_SIDE} px "
            f"(one {MIN_IMAGE_SIDE}-px ViT patch per side) is required"
        )
    return array


def _missing_decoder_hint(transfer_syntax: str, pydicom_message: str) -> str:
    """Pick the ``pip install`` command for a compressed transfer syntax whose decoder is missing."""
    for uids, hint in _DICOM_DECODER_HINTS:
        if transfer_syntax in uids:
            return hint
    # Unknown syntax: derive the packages from pydicom's own "<plugin> - requires A and B" lines.
    match = re.search(r"pylibjpeg - requires ([^\n]+)", pydicom_message) or re.search(
        r"- requires ([^\n]+)", pydicom_message
    )
    if match:
        packages = [re.split(r"[<>=!~ ]", p.strip())[0] for p in re.split(r",| and ", match.group(1)) if p.strip()]
        packages = [p for p in packages if p and p != "numpy"]
        if packages:
            return "pip install " + " ".join(packages)
    return "pip install pylibjpeg pylibjpeg-openjpeg pylibjpeg-libjpeg"


def _dicom_to_array(ds: Any, label: str) -> np.ndarray:
    """Decode a ``pydicom.Dataset`` to a float32 2-D array (grey) or uint8 HxWx3 array (colour).

    Grey pipeline: Modality LUT (rescale slope/intercept or LUT), VOI LUT or window centre/width where present,
    then MONOCHROME1 inversion (so that air/lungs are dark and bone is bright). Multi-frame data: first frame.
    """
    pydicom = _import_pydicom(label)
    apply_modality_lut = pydicom.pixels.apply_modality_lut
    apply_voi_lut = pydicom.pixels.apply_voi_lut

    if not any(tag in ds for tag in ("PixelData", "FloatPixelData", "DoubleFloatPixelData")):
        raise UnreadableImageError(f"{label}: DICOM file has no pixel data (PixelData element missing)")

    file_meta = getattr(ds, "file_meta", None)
    transfer_syntax = str(getattr(file_meta, "TransferSyntaxUID", "") or "")
    try:
        pixels = ds.pixel_array
    except (RuntimeError, NotImplementedError) as err:
        message = str(err)
        if "missing dependencies" in message or "no pixel data decoders" in message or "plugin" in message:
            hint = _missing_decoder_hint(transfer_syntax, message)
            try:
                syntax_name = pydicom.uid.UID(transfer_syntax).name if transfer_syntax else "compressed"
            except Exception:  # pragma: no cover - defensive
                syntax_name = transfer_syntax
            raise UnreadableImageError(
                f"{label}: cannot decode DICOM pixel data compressed as '{syntax_name}' because no decoder is "
                f"installed; install one with: {hint}  (pydicom said: {message.strip()})"
            ) from err
        raise UnreadableImageError(f"{label}: cannot decode DICOM pixel data: {message}") from err
    except Exception as err:  # truncated / inconsistent pixel data, bad attributes, ...
        raise UnreadableImageError(f"{label}: cannot decode DICOM pixel data: {err}") from err

    samples = int(ds.get("SamplesPerPixel", 1) or 1)
    frames = int(ds.get("NumberOfFrames", 1) or 1)
    if frames > 1:
        pixels = pixels[0]
    if samples > 1:
        # Colour (RGB / YBR already converted to RGB by pydicom): no grey LUTs apply.
        if pixels.ndim != 3 or pixels.shape[-1] not in (3, 4):
            raise UnreadableImageError(f"{label}: unsupported DICOM colour layout {pixels.shape}")
        return np.ascontiguousarray(pixels[..., :3])
    if pixels.ndim != 2:
        raise UnreadableImageError(f"{label}: unsupported DICOM pixel array shape {pixels.shape}")

    try:
        values = apply_modality_lut(pixels, ds)
        values = apply_voi_lut(values, ds)
    except Exception as err:
        raise UnreadableImageError(f"{label}: invalid DICOM LUT / window attributes: {err}") from err
    values = np.asarray(values, dtype=np.float32)
    if str(ds.get("PhotometricInterpretation", "")).strip().upper() == "MONOCHROME1":
        # High values are dark in MONOCHROME1: mirror within the value range (the range itself is unchanged).
        values = values.max() + values.min() - values
    return values


def _read_dicom_source(data: bytes | str | os.PathLike, label: str) -> np.ndarray:
    """Read DICOM from bytes or a path."""
    pydicom = _import_pydicom(label)
    try:
        fileobj = io.BytesIO(data) if isinstance(data, (bytes, bytearray, memoryview)) else os.fspath(data)
        ds = pydicom.dcmread(fileobj, force=True)
    except Exception as err:
        raise UnreadableImageError(f"{label}: not a readable DICOM file: {err}") from err
    return _dicom_to_array(ds, label)


def _pil_to_array(img: PIL.Image.Image, label: str) -> np.ndarray:
    """Convert a (fully loaded) PIL image to a 2-D grey or HxWx3 array keeping the native bit depth."""
    mode = img.mode
    if mode in ("I;16", "I;16L", "I;16B", "I;16N"):
        return np.asarray(img).astype(np.uint16)
    if mode == "I":
        array = np.asarray(img)
        if array.size and array.min() >= 0 and array.max() <= np.iinfo(np.uint16).max:
            return array.astype(np.uint16)
        return array.astype(np.int32)
    if mode == "F":
        return np.asarray(img, dtype=np.float32)
    if mode in ("LA", "La", "RGBA", "RGBa", "PA") or (mode == "P" and "transparency" in img.info):
        _reject_transparency(img, label)
    if mode in ("1", "L", "LA", "La"):
        return np.asarray(img.convert("L"))
    if mode == "P":
        # Palette images: drop transparency, keep grey palettes grey.
        rgb = np.asarray(img.convert("RGB"))
        if np.array_equal(rgb[..., 0], rgb[..., 1]) and np.array_equal(rgb[..., 0], rgb[..., 2]):
            return np.ascontiguousarray(rgb[..., 0])
        return rgb
    # RGB, opaque RGBA (alpha dropped, as PIL's convert("RGB") and transformers' load_image do), CMYK, YCbCr, ...
    return np.asarray(img.convert("RGB"))


def _reject_transparency(img: PIL.Image.Image, label: str) -> None:
    """An opaque alpha channel is harmless and dropped; real transparency leaves the grey values undefined."""
    alpha = np.asarray(img.convert("RGBA"))[..., 3]
    transparent = int((alpha < 255).sum())
    if transparent:
        raise UnreadableImageError(
            f"{label}: {transparent} pixels are transparent (alpha < 255); a radiograph has no transparency. "
            "Flatten the image onto a background and save it without an alpha channel."
        )


def _read_pil_source(fileobj: Any, label: str) -> np.ndarray:
    """Open, fully decode (``img.load()``) and convert an image file with PIL."""
    try:
        with PIL.Image.open(fileobj) as img:
            img.load()  # force a full decode: truncated files fail here (LOAD_TRUNCATED_IMAGES stays False)
            img = PIL.ImageOps.exif_transpose(img)
            return _pil_to_array(img, label)
    except UnreadableImageError:
        raise
    except PIL.UnidentifiedImageError as err:
        raise UnreadableImageError(f"{label}: not a recognised image file (PIL cannot identify it)") from err
    except (OSError, SyntaxError, ValueError, PIL.Image.DecompressionBombError) as err:
        raise UnreadableImageError(f"{label}: cannot decode image (truncated or corrupt?): {err}") from err


def _array_to_image_array(array: np.ndarray, label: str) -> np.ndarray:
    """Normalise a user array to 2-D (H, W) or (H, W, 3); accepts HxWx1/3/4 and 1/3/4xHxW layouts."""
    array = np.asarray(array)
    if array.dtype == bool:
        array = array.astype(np.uint8) * 255
    if array.ndim == 3:
        if array.shape[-1] not in (1, 3, 4) and array.shape[0] in (1, 3, 4):
            array = np.moveaxis(array, 0, -1)  # channels-first -> channels-last
        if array.shape[-1] == 1:
            array = array[..., 0]
        elif array.shape[-1] == 4:
            array = array[..., :3]  # drop alpha
        elif array.shape[-1] != 3:
            raise UnreadableImageError(f"{label}: unsupported array shape {array.shape}; expected HxW or HxWx3")
    elif array.ndim != 2:
        raise UnreadableImageError(f"{label}: unsupported array shape {array.shape}; expected HxW or HxWx3")
    if not (np.issubdtype(array.dtype, np.integer) or np.issubdtype(array.dtype, np.floating)):
        raise UnreadableImageError(f"{label}: unsupported array dtype {array.dtype}")
    if np.issubdtype(array.dtype, np.floating) and not np.all(np.isfinite(array)):
        raise UnreadableImageError(f"{label}: array contains NaN or infinite values")
    return np.ascontiguousarray(array)


def read_image(source: Any, name: str | None = None) -> np.ndarray:
    """Read a chest X-ray from a file, bytes, PIL image, numpy array or ``pydicom.Dataset``.

    Args:
        source: a path (``str`` / ``os.PathLike``), the file's ``bytes``, a ``PIL.Image.Image``, a numpy array
            (HxW, HxWx{1,3,4} or {1,3,4}xHxW) or a ``pydicom.Dataset``. Files are DICOM when they carry the
            ``DICM`` magic at byte 128 or end in ``.dcm``; anything else is decoded with PIL (PNG, JPEG, TIFF, ...)
            and fully loaded, so truncated files fail here rather than later.
        name: label used in error messages instead of the path (useful for bytes and in-memory objects).

    Returns:
        ``np.ndarray`` of shape (H, W) for grey images or (H, W, 3) for colour images, with the native values:

        - 8-bit PNG/JPEG (grey or RGB; RGBA/LA with the alpha channel dropped): ``uint8``;
        - 16-bit PNG/TIFF (PIL mode ``I;16``): ``uint16`` with the full 16-bit range kept (not truncated);
          32-bit integer images: ``uint16`` when they fit, else ``int32``; float TIFF: ``float32``;
        - grey DICOM: ``float32`` after the Modality LUT (rescale slope/intercept), the VOI LUT or window
          centre/width when present, and inversion of MONOCHROME1 (lungs dark, bone bright); colour DICOM: ``uint8``
          HxWx3; multi-frame DICOM: the first frame;
        - numpy input: its dtype (bool becomes uint8 0/255), channels moved last, alpha dropped.

        Use :func:`to_uint8` to apply RAD-DINO's min-max scaling to [0, 255].

    Raises:
        UnreadableImageError: the message names the file (or ``name``) and the reason: missing or empty file,
            not an image, truncated/corrupt data, an image smaller than :data:`MIN_IMAGE_SIDE` px per side, DICOM
            without pixel data, or a compressed DICOM whose decoder is not installed (with the ``pip install``
            command to fix it).
    """
    label = _describe(source, name)

    if _is_dicom_dataset(source):
        return _check_size(_dicom_to_array(source, label), label)

    if isinstance(source, PIL.Image.Image):
        try:
            source.load()
        except Exception as err:
            raise UnreadableImageError(f"{label}: cannot decode image (truncated or corrupt?): {err}") from err
        return _check_size(_pil_to_array(source, label), label)

    if isinstance(source, np.ndarray):
        return _check_size(_array_to_image_array(source, label), label)

    if isinstance(source, (bytes, bytearray, memoryview)):
        data = bytes(source)
        if not data:
            raise UnreadableImageError(f"{label}: empty input (0 bytes)")
        if data[_DICOM_MAGIC_OFFSET : _DICOM_MAGIC_OFFSET + 4] == _DICOM_MAGIC or (
            name is not None and str(name).lower().endswith(".dcm")
        ):
            return _check_size(_read_dicom_source(data, label), label)
        return _check_size(_read_pil_source(io.BytesIO(data), label), label)

    if isinstance(source, (str, os.PathLike)):
        path = Path(source)
        if not path.is_file():
            raise UnreadableImageError(f"{label}: no such file")
        try:
            size = path.stat().st_size
            with open(path, "rb") as handle:
                header = handle.read(_DICOM_MAGIC_OFFSET + 4)
        except OSError as err:
            raise UnreadableImageError(f"{label}: cannot open file: {err}") from err
        if size == 0:
            raise UnreadableImageError(f"{label}: empty file (0 bytes)")
        if header[_DICOM_MAGIC_OFFSET:] == _DICOM_MAGIC or path.suffix.lower() == ".dcm":
            return _check_size(_read_dicom_source(path, label), label)
        return _check_size(_read_pil_source(path, label), label)

    raise UnreadableImageError(
        f"{label}: unsupported input type {type(source).__name__}; expected a path, bytes, PIL image, numpy array "
        "or pydicom Dataset"
    )


def to_uint8(array: np.ndarray) -> np.ndarray:
    """Min-max scale an image to the full [0, 255] range and return it as ``uint8`` (RAD-DINO preprocessing).

    Args:
        array: (H, W) or (H, W, C) numeric array of any dtype (e.g. uint16 PNG values or float32 DICOM values).
            For colour arrays one minimum and maximum over all channels is used, so colours are preserved.

    Returns:
        ``np.ndarray`` of dtype ``uint8`` and the same shape: ``round(255 * (x - min) / (max - min))``, so the
        minimum maps to 0 and the maximum to 255. A constant image (max == min) maps to all zeros. Computed in
        float64, so 16-bit and 32-bit inputs keep their precision until the final rounding.
    """
    values = np.asarray(array, dtype=np.float64)
    if values.size == 0:
        return np.zeros(values.shape, dtype=np.uint8)
    low = float(values.min())
    high = float(values.max())
    if not np.isfinite(low) or not np.isfinite(high):
        raise ValueError("to_uint8: array contains NaN or infinite values")
    if high <= low:
        return np.zeros(values.shape, dtype=np.uint8)
    scaled = (values - low) * (255.0 / (high - low))
    return np.clip(np.rint(scaled), 0, 255).astype(np.uint8)


# --------------------------------------------------------------------------------------------------------------
# Image processor
# --------------------------------------------------------------------------------------------------------------


def _is_url(value: str) -> bool:
    return value.startswith(("http://", "https://"))


def _is_torch_tensor(obj: Any) -> bool:
    return type(obj).__module__.startswith("torch") and hasattr(obj, "numpy") and hasattr(obj, "dtype")


class RadDinoImageProcessor(BitImageProcessorPil):
    """``BitImageProcessor`` (PIL backend) with the released ``microsoft/rad-dino`` settings, plus X-ray readers.

    Defaults equal the ``microsoft/rad-dino`` ``preprocessor_config.json``: resize the shortest edge to 518 with
    bicubic resampling, centre-crop 518x518, rescale by 1/255, normalise with mean 0.5307 and std 0.2583 per
    channel, convert to RGB. Output ``pixel_values``: float32 (N, 3, 518, 518).

    Inputs:

    - 8-bit images (PIL images in 8-bit modes, ``uint8`` arrays, float arrays, ``uint8`` tensors) are passed to
      ``BitImageProcessorPil`` untouched, so the output is bit-identical to it.
    - Paths (``str`` / ``os.PathLike``, not URLs), ``bytes`` and ``pydicom.Dataset`` objects are read with
      :func:`read_image`; 16-bit PIL images (modes ``I;16``, ``I``, ``F``) and integer arrays/tensors wider than
      8 bits also go through :func:`read_image`. Anything that is not already ``uint8`` (16-bit, DICOM) is then
      min-max scaled to ``uint8`` with :func:`to_uint8`, as in RAD-DINO's published DICOM preprocessing; grey
      images are repeated to 3 channels; then the stock pipeline runs. 8-bit files read from a path give the same
      result as ``BitImageProcessor`` given the same path.

    Unreadable inputs raise :class:`UnreadableImageError` naming the file.
    """

    resample = PILImageResampling.BICUBIC
    image_mean = RAD_DINO_IMAGE_MEAN
    image_std = RAD_DINO_IMAGE_STD
    size = {"shortest_edge": 518}
    default_to_square = False
    crop_size = {"height": 518, "width": 518}
    do_resize = True
    do_center_crop = True
    do_rescale = True
    rescale_factor = 1 / 255
    do_normalize = True
    do_convert_rgb = True

    # -- input mapping ------------------------------------------------------------------------------------------

    @staticmethod
    def _as_uint8_rgb(array: np.ndarray) -> np.ndarray:
        """(H, W) or (H, W, 3) array of any dtype -> (H, W, 3) uint8 (min-max scaled unless already uint8)."""
        if array.dtype != np.uint8:
            array = to_uint8(array)
        if array.ndim == 2:
            array = np.repeat(array[..., None], 3, axis=-1)
        return np.ascontiguousarray(array)

    def _convert_input(self, image: Any) -> Any:
        """Map one input to something ``BitImageProcessorPil`` accepts, reading files/DICOM/16-bit data."""
        if isinstance(image, str) and _is_url(image):
            return image  # left to transformers' load_image
        if isinstance(image, (str, os.PathLike, bytes, bytearray, memoryview)) or _is_dicom_dataset(image):
            return self._as_uint8_rgb(read_image(image))
        if isinstance(image, PIL.Image.Image):
            if image.mode in _EIGHT_BIT_PIL_MODES:
                return image
            return self._as_uint8_rgb(read_image(image))
        if _is_torch_tensor(image):
            if (image.dtype.is_floating_point or str(image.dtype) in ("torch.uint8", "torch.bool")) and image.ndim != 2:
                return image
            image = image.detach().cpu().numpy()
        if isinstance(image, np.ndarray):
            if image.dtype == np.uint8 or np.issubdtype(image.dtype, np.floating):
                if image.ndim == 2:  # the stock processor rejects 2-D arrays: repeat grey to 3 channels
                    return np.repeat(image[..., None], 3, axis=-1)
                return image
            if np.issubdtype(image.dtype, np.integer) or image.dtype == bool:
                if image.ndim == 4:  # a batch as one array
                    return [self._as_uint8_rgb(read_image(frame)) for frame in image]
                return self._as_uint8_rgb(read_image(image))
        return image

    def _convert_inputs(self, images: Any) -> Any:
        if isinstance(images, (list, tuple)):
            converted = []
            for item in images:
                result = self._convert_inputs(item)
                # A 4-D integer array expands to a list of images: flatten it into this level.
                if isinstance(item, np.ndarray) and isinstance(result, list):
                    converted.extend(result)
                else:
                    converted.append(result)
            return converted
        return self._convert_input(images)

    def preprocess(self, images: Any, *args, **kwargs) -> Any:
        """Preprocess one image or a (nested) list of images into ``pixel_values``.

        Args:
            images: an image or a list of images, each a path, bytes, PIL image, numpy array, torch tensor or
                ``pydicom.Dataset`` (see the class docstring for how each is handled).
            **kwargs: any ``BitImageProcessor`` option (``return_tensors``, ``size``, ...), overriding the defaults.

        Returns:
            ``BatchFeature`` with ``pixel_values``: (N, 3, 518, 518) float32 with the default settings (a list of
            (3, H, W) arrays if ``return_tensors`` is None, an array/tensor for ``"np"``/``"pt"``).
        """
        return super().preprocess(self._convert_inputs(images), *args, **kwargs)

    # -- serialisation ------------------------------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        """Serialise like ``BitImageProcessor`` so that stock transformers can load the saved config.

        ``image_processor_type`` is saved as ``"BitImageProcessor"``; the ``auto_map`` entry that
        ``save_pretrained`` adds for ``trust_remote_code=True`` is written per backend, ``{"pil": ...}`` (see the
        module docstring: a plain string entry makes ``pipeline(...)`` ask whether to run custom code).
        """
        output = super().to_dict()
        output["image_processor_type"] = "BitImageProcessor"
        auto_map = output.get("auto_map") or {}
        if isinstance(auto_map.get("AutoImageProcessor"), str):
            output["auto_map"] = {**auto_map, "AutoImageProcessor": {"pil": auto_map["AutoImageProcessor"]}}
        return output


# Makes save_pretrained copy this file and write auto_map["AutoImageProcessor"] into preprocessor_config.json.
RadDinoImageProcessor.register_for_auto_class("AutoImageProcessor")
