"""`data:` URLs (RFC 2397) as sent by OpenAI-style clients for images: `data:image/png;base64,...`."""
import base64
import binascii


def decode_data_url(url: str) -> bytes:
    """The bytes of a data URL; a ValueError saying what is wrong otherwise."""
    if not isinstance(url, str) or not url.startswith("data:"):
        raise ValueError("not a data URL (expected 'data:<mime>;base64,<data>')")
    head, sep, payload = url[5:].partition(",")
    if not sep:
        raise ValueError("data URL without ',' between the media type and the data")
    if head.endswith(";base64"):
        try:
            return base64.b64decode(payload, validate=True)
        except (binascii.Error, ValueError) as e:
            raise ValueError(f"data URL: the base64 data does not decode ({e})") from None
    from urllib.parse import unquote_to_bytes
    return unquote_to_bytes(payload)
