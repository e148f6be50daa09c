"""Image inputs: encoded images in, the model's input tensor out. One definition, used by
`mar build` for the golden batch (from encoded images) and by every worker.

    input:
      type: image
      shape: [3, 224, 224]
      image: {mode: RGB, resize: 256, center_crop: 224, mean: [...], std: [...],
              formats: [jpeg, png, webp], max_pixels: 40000000, max_bytes: 20000000}

or, for detection and segmentation, images that keep their own size (or are only resized, the
shorter side): `shape: [3, null, null]` with `max: [HEIGHT, WIDTH]`, no center_crop.

Decoding is Pillow's, with every limit checked before pixels are decoded: the encoded size
(`max_bytes`), the format (`formats`: only those plugins run), and the width x height in the header
(`max_pixels`, against decompression bombs, whatever Pillow's own check says). Preprocessing
follows torchvision's transforms on PIL images, the path TorchServe's stock image classifier takes:
Resize(int) (the shorter side, bilinear), then CenterCrop(int) (padding with black where the image
is smaller), ToTensor (x `scale`), Normalize. Without `resize` or `center_crop` an image must
already have the input's size.
"""

from __future__ import annotations

import io
import warnings
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from handlers.errors import RequestError
from handlers.kinds.tensor import Rows, TensorKind, is_binary

if TYPE_CHECKING:
    from handlers.io_spec import InputSpec

__all__ = ["ImageKind", "ImageSpec", "IMAGE_FORMATS", "parse_image", "image_to_dict", "preprocess",
           "golden_picture", "FORMAT_NAMES", "CONTENT_TYPES"]

IMAGE_FORMATS = ("jpeg", "png", "webp")


@dataclass(frozen=True)
class ImageSpec:
    """How encoded images become the input tensor (this module), at build and in the worker."""
    mode: str = "RGB"  # RGB (3 channels) or L (1)
    resize: int | None = None  # the shorter side, bilinear, as torchvision's Resize(int) on PIL
    center_crop: int | None = None  # a square, as torchvision's CenterCrop(int)
    scale: float = 1 / 255  # pixel values 0..255 times this
    mean: tuple[float, ...] | None = None  # per channel, subtracted after scaling
    std: tuple[float, ...] | None = None  # per channel, divided by after the mean
    formats: tuple[str, ...] = IMAGE_FORMATS  # what is decoded; others refused
    max_pixels: int = 40_000_000  # width x height before decoding: decompression bombs refused
    max_bytes: int = 20_000_000  # the encoded image


def parse_image(value: Any, shape: list, where: str, problems: list[str]) -> ImageSpec:
    """An image input's `image` settings; every problem appended to `problems`."""
    value = {} if value is None else value
    if not isinstance(value, dict):
        problems.append(f"`{where}.image` must be a mapping, e.g. {{mode: RGB, resize: 256, "
                        "center_crop: 224, mean: [...], std: [...]}}")
        return ImageSpec()
    allowed = {"mode", "resize", "center_crop", "scale", "mean", "std", "formats", "max_pixels",
               "max_bytes"}
    for key in sorted(set(value) - allowed, key=str):
        problems.append(f"unknown key `{where}.image.{key}` (allowed: {', '.join(sorted(allowed))})")
    settings = {k: v for k, v in value.items() if k in allowed}
    mode = settings.get("mode", "RGB")
    channels = {"RGB": 3, "L": 1}.get(mode)
    if channels is None:
        problems.append(f"`{where}.image.mode` {mode!r} is not RGB or L")
        channels = 3
    own_size = len(shape) == 3 and shape[1] is None and shape[2] is None
    if len(shape) != 3 or shape[0] != channels or (None in shape and not own_size):
        problems.append(f"`{where}.shape` {shape!r} must be [channels, height, width] with "
                        f"{channels} channel(s) for mode {mode}, e.g. [{channels}, 224, 224], or "
                        f"[{channels}, null, null] with max for images of their own size")
    if own_size and "center_crop" in settings:
        problems.append(f"`{where}`: an image of its own size ([{channels}, null, null]) cannot be "
                        "center-cropped to a square; drop image.center_crop, or give the shape "
                        "the crop's size")
    for key in ("resize", "center_crop", "max_pixels", "max_bytes"):
        if key in settings and not (isinstance(settings[key], int) and not isinstance(
                settings[key], bool) and settings[key] > 0):
            problems.append(f"`{where}.image.{key}` {settings.pop(key)!r} must be a positive integer")
    for key in ("mean", "std"):
        if key in settings:
            values = settings[key]
            if not (isinstance(values, list) and len(values) == channels and all(
                    isinstance(v, (int, float)) and not isinstance(v, bool) for v in values)):
                problems.append(f"`{where}.image.{key}` must list {channels} numbers, one per channel")
                settings.pop(key)
            else:
                settings[key] = tuple(float(v) for v in values)
    if "std" in settings and any(v == 0 for v in settings["std"]):
        problems.append(f"`{where}.image.std` must not hold 0")
    formats = settings.get("formats", list(IMAGE_FORMATS))
    if not (isinstance(formats, list) and formats and set(formats) <= set(IMAGE_FORMATS)):
        problems.append(f"`{where}.image.formats` {formats!r} must be a list from "
                        f"{', '.join(IMAGE_FORMATS)}")
        formats = list(IMAGE_FORMATS)
    settings["formats"] = tuple(formats)
    scale = settings.get("scale", 1 / 255)
    if isinstance(scale, bool) or not isinstance(scale, (int, float)):
        problems.append(f"`{where}.image.scale` {scale!r} must be a number")
        settings.pop("scale")
    crop = settings.get("center_crop")
    if len(shape) == 3 and None not in shape and crop is not None and \
            (shape[1], shape[2]) != (crop, crop):
        problems.append(f"`{where}.shape` {shape!r} must end in the center_crop ({crop}, {crop})")
    return ImageSpec(**settings)


def image_to_dict(image: ImageSpec) -> dict[str, Any]:
    """The settings as YAML-ready data (the archive's spec.yaml)."""
    return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(image).items()
            if v is not None}


FORMAT_NAMES = {"JPEG": "jpeg", "PNG": "png", "WEBP": "webp"}  # Pillow's names -> the spec's
_PILLOW_NAMES = {spec_name: pillow for pillow, spec_name in FORMAT_NAMES.items()}
CONTENT_TYPES = {"image/jpeg": "jpeg", "image/jpg": "jpeg", "image/png": "png", "image/webp": "webp"}


def preprocess(data: bytes, model_input: InputSpec, what: str) -> np.ndarray:
    """One encoded image as the input's (channels, height, width) array. Raises RequestError
    naming the rule it breaks."""
    settings = model_input.image
    if not data:
        raise RequestError(f"{what} is empty; send a {'/'.join(settings.formats).upper()} image")
    if len(data) > settings.max_bytes:
        raise RequestError(f"{what} is {len(data):,} bytes, over the limit of "
                           f"{settings.max_bytes:,} (the spec's image.max_bytes)")
    with _opened(data, model_input, what) as image:
        try:
            image.load()
            pixels = _cropped(_resized(image.convert(settings.mode), settings), settings,
                              model_input, what)
        except RequestError:
            raise
        except Exception as err:  # noqa: BLE001 - any decoder failure on these bytes is theirs
            raise _corrupt(what, err) from None
    return _tensor(pixels, model_input)


@contextmanager
def _opened(data: bytes, model_input: InputSpec, what: str):
    """The image with its header read and checked (format, width x height, and an image of its
    own size against the input's max), pixels not decoded.

    Only the plugins of the spec's formats are tried: every other decoder Pillow carries is code
    an attacker could choose to run. Pillow's own bomb check uses the spec's max_pixels (a
    module setting; a worker decodes one image at a time), so whichever check fires, the answer
    is the same 400.
    """
    from PIL import Image, UnidentifiedImageError

    settings = model_input.image
    Image.MAX_IMAGE_PIXELS = settings.max_pixels
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # refused just below
            image = Image.open(io.BytesIO(data), formats=[_PILLOW_NAMES[f] for f in settings.formats])
    except Image.DecompressionBombError as err:  # over twice the limit: Pillow's figure
        raise RequestError(f"{what} is over the limit of {settings.max_pixels:,} pixels "
                           f"(image.max_pixels; {err}); send a smaller image") from None
    except UnidentifiedImageError:
        raise RequestError(f"{what} is not a readable {', '.join(settings.formats)} image (the "
                           "formats this model takes, image.formats): another format, or corrupt "
                           "or truncated; send one of those formats") from None
    except Exception as err:  # noqa: BLE001 - a header no plugin expected
        raise _corrupt(what, err) from None
    with image:
        width, height = image.size
        if width * height > settings.max_pixels:
            raise RequestError(f"{what} is {width}x{height} = {width * height:,} pixels, over "
                               f"the limit of {settings.max_pixels:,} (image.max_pixels); send a "
                               "smaller image")
        if model_input.dynamic and settings.resize is None:
            _check_own_size(width, height, model_input, what)
        yield image


def _check_own_size(width: int, height: int, model_input: InputSpec, what: str) -> None:
    """An image served at its own size must fit the input's `max` and `min` (height, width)."""
    (max_height, max_width), (min_height, min_width) = model_input.max, model_input.lower
    if height > max_height or width > max_width:
        raise RequestError(f"{what} is {width}x{height} (width x height), over this model's max "
                           f"of {max_width}x{max_height} (the spec's input max: [{max_height}, "
                           f"{max_width}]); send an image at most that size")
    if height < min_height or width < min_width:
        raise RequestError(f"{what} is {width}x{height} (width x height), under this model's min "
                           f"of {min_width}x{min_height} (the spec's input min: [{min_height}, "
                           f"{min_width}]); send an image at least that size")


def _corrupt(what: str, err: Exception) -> RequestError:
    return RequestError(f"{what} is a corrupt or truncated image ({type(err).__name__}: "
                        f"{str(err)[:200]})")


def _resized(image, settings):
    if settings.resize is None:
        return image
    from PIL import Image

    width, height = image.size
    short, long = (width, height) if width <= height else (height, width)
    new_short, new_long = settings.resize, int(settings.resize * long / short)
    size = (new_short, new_long) if width <= height else (new_long, new_short)
    return image if size == image.size else image.resize(size, Image.BILINEAR)


def _cropped(image, settings, model_input: InputSpec, what: str):
    height, width = model_input.shape[1], model_input.shape[2]
    if height is None:  # an image of its own size (or only resized), bounded by `max`
        return image
    if settings.center_crop is None:
        if settings.resize is None and image.size != (width, height):
            raise RequestError(f"{what} is {image.size[0]}x{image.size[1]}; this model takes "
                               f"{width}x{height} images (no image.resize or center_crop in its spec)")
        return image if image.size == (width, height) else image.resize((width, height))
    crop = settings.center_crop
    if image.size[0] < crop or image.size[1] < crop:  # torchvision pads with black, then crops
        from PIL import Image

        padded = Image.new(image.mode, (max(crop, image.size[0]), max(crop, image.size[1])))
        padded.paste(image, ((padded.size[0] - image.size[0]) // 2,
                             (padded.size[1] - image.size[1]) // 2))
        image = padded
    left = int(round((image.size[0] - crop) / 2.0))
    top = int(round((image.size[1] - crop) / 2.0))
    return image.crop((left, top, left + crop, top + crop))


def _tensor(image, model_input: InputSpec) -> np.ndarray:
    settings = model_input.image
    pixels = np.asarray(image, dtype=np.uint8)
    pixels = pixels[:, :, None] if pixels.ndim == 2 else pixels
    chw = np.ascontiguousarray(pixels.transpose(2, 0, 1))
    if model_input.dtype == "uint8":
        return chw
    array = chw.astype(np.float32) / np.float32(1 / settings.scale)  # as ToTensor's div(255)
    if settings.mean is not None:
        array -= np.asarray(settings.mean, dtype=np.float32)[:, None, None]
    if settings.std is not None:
        array /= np.asarray(settings.std, dtype=np.float32)[:, None, None]
    return array


def golden_picture(model_input: InputSpec, generator, index: int,
                   size: tuple[int, int] | None = None) -> np.ndarray:
    """A seeded picture (smooth gradients and noise, of a size the preprocessing must resize and
    crop, or `size` (height, width) for an image of its own size), PNG-encoded, then decoded and
    preprocessed as a worker does."""
    import torch
    from PIL import Image

    settings = model_input.image
    channels, height, width = model_input.shape
    if height is None:
        height, width = size
    elif settings.resize is not None or settings.center_crop is not None:
        height, width = (height * 5 // 4 + index, width * 3 // 2)  # landscape, larger than the crop
    noise = torch.rand((height, width, channels), generator=generator).numpy()
    ramp = np.linspace(0, 1, width, dtype=np.float32)[None, :, None]
    pixels = (255 * (0.6 * noise + 0.4 * ramp)).astype(np.uint8)
    image = Image.fromarray(pixels[:, :, 0] if channels == 1 else pixels, settings.mode)
    encoded = io.BytesIO()
    image.save(encoded, format="PNG")
    return preprocess(encoded.getvalue(), model_input, "a golden image")


class ImageKind(TensorKind):
    """An image input: encoded images (raw, base64, multipart, v2 BYTES) or already-preprocessed
    numbers."""

    takes_bytes_elements = True
    noun = "image"

    @property
    def byte_limit(self) -> int:
        return self.input.image.max_bytes

    @property
    def body_types(self) -> tuple[str, ...]:
        return tuple(f"image/{kind}" for kind in self.input.image.formats)

    def takes_body(self, content_type: str) -> bool:
        return CONTENT_TYPES.get(content_type) in self.input.image.formats

    def rows(self, value: Any, what: str, batched: bool) -> Rows:
        if is_binary(value) or isinstance(value, list) and value and all(is_binary(v) for v in value):
            images = value if isinstance(value, list) else [value]
            return [preprocess(self.binary(image, what), self.input, what) for image in images]
        return super().rows(value, what, batched)  # preprocessed already

    def bytes_elements(self, items: list, name: str) -> list:
        """Encoded images: raw in binary tensors, base64 strings in JSON ones."""
        return [{"b64": item} if isinstance(item, str) else item for item in items]

    def golden(self, shape, batch, generator):
        import torch

        return torch.from_numpy(np.stack([golden_picture(self.input, generator, i, shape[1:])
                                          for i in range(batch)]))
