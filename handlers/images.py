"""Encoded images in, the model's input tensor out: one definition, used by `mar build` for the
golden batch (from encoded images) and by every worker.

Decoding is Pillow's, with every limit checked before pixels are decoded: the encoded size
(`max_bytes`), the format (`formats`: only those plugins run), and the width x height in the header
(`max_pixels`, against decompression bombs, whatever Pillow's own check says). Preprocessing follows torchvision's transforms on PIL images, the
path TorchServe's stock image classifier takes: Resize(int) (the shorter side, bilinear), then
CenterCrop(int) (padding with black where the image is smaller), ToTensor (x `scale`), Normalize.
Without `resize` or `center_crop` an image must already have the input's size.
"""

from __future__ import annotations

import io
import warnings
from contextlib import contextmanager

import numpy as np

from handlers.errors import RequestError
from handlers.io_spec import ImageSpec, InputSpec

__all__ = ["preprocess", "FORMAT_NAMES", "CONTENT_TYPES"]

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
    with _opened(data, settings, what) as image:
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
def _opened(data: bytes, settings: ImageSpec, what: str):
    """The image with its header read and checked (format, width x height), pixels not decoded.

    Only the plugins of the spec's formats are tried: every other decoder Pillow carries is code
    an attacker could choose to run. Pillow's own bomb check uses the spec's max_pixels (a
    module setting; a worker decodes one image at a time), so whichever check fires, the answer
    is the same 400.
    """
    from PIL import Image, UnidentifiedImageError

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
        yield image


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
