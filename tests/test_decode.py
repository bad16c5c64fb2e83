"""decode_image / file_id on hostile files, all made with PIL in tmp_path."""

import hashlib
import io
import os
import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from item.featurize.inputs import decode as dec
from item.featurize.inputs.decode import SKIP_REASONS, DecodeError, decode_image, file_id


def _reason(path, **kw):
    with pytest.raises(DecodeError) as ei:
        decode_image(path, **kw)
    assert ei.value.reason in SKIP_REASONS
    return ei.value.reason


def _noise(w, h, seed=0):
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8))


def test_rgb_png_roundtrip(tmp_path):
    img = _noise(33, 17)
    p = tmp_path / "a.png"
    img.save(p)
    d = decode_image(p)
    assert (d.width, d.height, d.format, d.image.mode) == (33, 17, "PNG", "RGB")
    assert np.array_equal(np.asarray(d.image), np.asarray(img))


@pytest.mark.parametrize("fmt,ext", [("JPEG", "jpg"), ("WEBP", "webp"), ("BMP", "bmp"), ("TIFF", "tif"), ("GIF", "gif")])
def test_common_formats(tmp_path, fmt, ext):
    p = tmp_path / f"x.{ext}"
    Image.new("RGB", (20, 10), (200, 30, 40)).save(p, format=fmt)
    d = decode_image(p)
    assert (d.width, d.height, d.format, d.image.mode) == (20, 10, fmt, "RGB")
    r, g, b = d.image.getpixel((5, 5))
    assert abs(r - 200) < 12 and abs(g - 30) < 12 and abs(b - 40) < 12


def test_empty_file(tmp_path):
    p = tmp_path / "empty.jpg"
    p.write_bytes(b"")
    assert _reason(p) == "empty-file"


@pytest.mark.parametrize("fmt", ["JPEG", "PNG"])
def test_truncated(tmp_path, fmt):
    buf = io.BytesIO()
    _noise(200, 200).save(buf, format=fmt)
    p = tmp_path / f"t.{fmt.lower()}"
    p.write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
    assert _reason(p) == "truncated"
    from PIL import ImageFile

    assert ImageFile.LOAD_TRUNCATED_IMAGES is False


def test_html_named_jpg(tmp_path):
    p = tmp_path / "page.jpg"
    p.write_text("<!DOCTYPE html><html><body>404 Not Found</body></html>")
    assert _reason(p) == "not-an-image"


def _png_header_only(w, h):
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 16)) + chunk(b"IEND", b"")


def test_bomb_is_too_large_without_decoding(tmp_path):
    p = tmp_path / "bomb.png"
    p.write_bytes(_png_header_only(100_000, 100_000))  # 1e10 pixels declared, a few bytes on disk
    assert _reason(p) == "too-large"
    with pytest.raises(DecodeError) as ei:
        decode_image(p, max_pixels=1000)
    assert ei.value.reason == "too-large"
    # lifting the limit gets past the size check, to the (missing) pixel data
    assert _reason(p, max_pixels=None) in ("truncated", "corrupt")
    assert Image.MAX_IMAGE_PIXELS == dec.DEFAULT_MAX_PIXELS  # global restored


def test_max_pixels_is_strict_and_can_be_raised(tmp_path):
    p = tmp_path / "m.png"
    Image.new("RGB", (10, 10)).save(p)
    assert decode_image(p, max_pixels=100).width == 10
    assert _reason(p, max_pixels=99) == "too-large"


def test_cmyk_jpeg(tmp_path):
    p = tmp_path / "cmyk.jpg"
    Image.new("CMYK", (8, 8), (0, 255, 255, 0)).save(p, quality=95)  # pure red in CMYK
    d = decode_image(p)
    assert d.image.mode == "RGB"
    r, g, b = d.image.getpixel((4, 4))
    assert r > 200 and g < 60 and b < 60


def test_16bit_png_is_scaled_not_clipped(tmp_path):
    a = np.array([[0, 257 * 100, 32768, 65535]], dtype=np.uint16)
    p = tmp_path / "g16.png"
    Image.fromarray(a).save(p)
    assert Image.open(p).mode.startswith("I")
    d = decode_image(p)
    assert np.asarray(d.image)[0, :, 0].tolist() == [0, 100, 128, 255]


def test_int32_and_float_modes(tmp_path):
    p = tmp_path / "i.tif"
    Image.fromarray(np.array([[0, 65535]], dtype=np.int32)).save(p)
    assert np.asarray(decode_image(p).image)[0, :, 0].tolist() == [0, 255]
    p = tmp_path / "f.tif"
    Image.fromarray(np.array([[0.0, 0.5, 1.0]], dtype=np.float32)).save(p)
    assert np.asarray(decode_image(p).image)[0, :, 0].tolist() == [0, 128, 255]


def test_palette_with_transparency_over_white(tmp_path):
    img = Image.new("P", (4, 1))
    img.putpalette([0, 0, 0, 255, 0, 0] + [0] * 762)
    img.putdata([0, 1, 0, 1])
    p = tmp_path / "p.png"
    img.save(p, transparency=0)
    px = np.asarray(decode_image(p).image)[0].tolist()
    assert px == [[255, 255, 255], [255, 0, 0], [255, 255, 255], [255, 0, 0]]


def test_rgba_and_la_composited_over_white(tmp_path):
    p = tmp_path / "rgba.png"
    Image.new("RGBA", (2, 2), (0, 0, 0, 0)).save(p)
    assert decode_image(p).image.getpixel((0, 0)) == (255, 255, 255)
    p = tmp_path / "la.png"
    Image.new("LA", (2, 2), (0, 128)).save(p)
    v = decode_image(p).image.getpixel((0, 0))
    assert v[0] == v[1] == v[2] and 120 <= v[0] <= 135


def test_one_bit_and_grey(tmp_path):
    img = Image.new("1", (2, 1))
    img.putpixel((1, 0), 1)
    p = tmp_path / "b.png"
    img.save(p)
    assert np.asarray(decode_image(p).image)[0].tolist() == [[0, 0, 0], [255, 255, 255]]
    p = tmp_path / "l.png"
    Image.new("L", (1, 1), 77).save(p)
    assert decode_image(p).image.getpixel((0, 0)) == (77, 77, 77)


@pytest.mark.parametrize("fmt,ext", [("GIF", "gif"), ("WEBP", "webp")])
def test_animated_first_frame(tmp_path, fmt, ext):
    frames = [Image.new("RGB", (16, 16), c) for c in ((250, 0, 0), (0, 0, 250), (0, 250, 0))]
    p = tmp_path / f"anim.{ext}"
    kw = {"lossless": True} if fmt == "WEBP" else {}
    frames[0].save(p, format=fmt, save_all=True, append_images=frames[1:], duration=100, loop=0, **kw)
    assert getattr(Image.open(p), "n_frames", 1) == 3
    r, g, b = decode_image(p).image.getpixel((8, 8))
    assert r > 200 and g < 40 and b < 40


def test_exif_rotation_applied(tmp_path):
    a = np.zeros((20, 40, 3), dtype=np.uint8)  # 40 wide, 20 high
    a[:, :20] = (255, 0, 0)  # left half red
    a[:, 20:] = (0, 0, 255)  # right half blue
    img = Image.fromarray(a)
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 CW on display
    p = tmp_path / "rot.jpg"
    img.save(p, exif=exif, quality=95)
    d = decode_image(p)
    assert (d.width, d.height) == (20, 40)
    top = d.image.getpixel((10, 5))
    bottom = d.image.getpixel((10, 35))
    assert top[0] > 200 and top[2] < 60  # left (red) is now on top
    assert bottom[2] > 200 and bottom[0] < 60


@pytest.mark.parametrize("size", [(1, 1), (10000, 10), (10, 10000)])
def test_tiny_and_thin(tmp_path, size):
    p = tmp_path / "s.png"
    Image.new("RGB", size, (9, 8, 7)).save(p)
    d = decode_image(p)
    assert (d.width, d.height) == size and d.image.getpixel((0, 0)) == (9, 8, 7)


def test_unreadable(tmp_path):
    p = tmp_path / "secret.png"
    Image.new("RGB", (2, 2)).save(p)
    os.chmod(p, 0)
    try:
        if os.access(p, os.R_OK):  # root reads anyway
            pytest.skip("running as root: chmod 000 does not block reads (see test_permission_error_mapping)")
        assert _reason(p) == "unreadable"
        with pytest.raises(DecodeError) as ei:
            file_id(p)
        assert ei.value.reason == "unreadable"
    finally:
        os.chmod(p, 0o644)


def test_permission_error_mapping(tmp_path, monkeypatch):
    p = tmp_path / "x.png"
    Image.new("RGB", (2, 2)).save(p)

    def deny(*a, **k):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(dec.Image, "open", deny)
    assert _reason(p) == "unreadable"


def test_missing_broken_symlink_directory(tmp_path):
    assert _reason(tmp_path / "nope.jpg") == "missing"
    link = tmp_path / "dangling.jpg"
    link.symlink_to(tmp_path / "gone.jpg")
    assert _reason(link) == "broken-symlink"
    d = tmp_path / "x.jpg"
    d.mkdir()
    assert _reason(d) == "is-a-directory"
    with pytest.raises(DecodeError) as ei:
        file_id(link)
    assert ei.value.reason == "broken-symlink"


def test_non_utf8_file_name(tmp_path):
    name = os.path.join(os.fsencode(tmp_path), b"caf\xe9-\xff.png")
    Image.new("RGB", (3, 2), (1, 2, 3)).save(io_buf := io.BytesIO(), format="PNG")
    with open(name, "wb") as f:
        f.write(io_buf.getvalue())
    for path in (name, os.fsdecode(name)):
        d = decode_image(path)
        assert (d.width, d.height) == (3, 2)
        assert file_id(path) == hashlib.sha256(io_buf.getvalue()).hexdigest()


def test_file_id_streams_sha256(tmp_path, monkeypatch):
    data = os.urandom(3 * 1024 + 7)
    p = tmp_path / "blob.bin"
    p.write_bytes(data)
    monkeypatch.setattr(dec, "_CHUNK", 1000)  # force several chunks
    assert file_id(p) == hashlib.sha256(data).hexdigest()
    e = tmp_path / "e.jpg"
    e.write_bytes(b"")
    assert file_id(e) == hashlib.sha256(b"").hexdigest()


def test_decode_error_message_names_path_and_reason(tmp_path):
    p = tmp_path / "z.jpg"
    p.write_bytes(b"")
    with pytest.raises(DecodeError) as ei:
        decode_image(p)
    assert str(p) in str(ei.value) and "empty-file" in str(ei.value)


# -- issue 30 (4): a file Pillow cannot fully decode is never a good image ---------------------------
def _encoded(fmt, seed=0, **kw) -> bytes:
    buf = io.BytesIO()
    _noise(96, 64, seed).save(buf, format=fmt, **kw)
    return buf.getvalue()


def _pillow_fails(data: bytes) -> bool:
    """Whether Pillow's own open + load of these bytes raises (the reference for 'cannot fully decode')."""
    try:
        with Image.open(io.BytesIO(data)) as im:
            im.load()
        return False
    except Exception:
        return True


def _damaged_idat_png() -> bytes:
    """A PNG whose IDAT data is damaged, its chunk CRC fixed so that only the zlib stream is wrong."""
    data = bytearray(_encoded("PNG"))
    at = data.find(b"IDAT")
    n = struct.unpack(">I", data[at - 4:at])[0]
    for i in range(at + 4 + 10, at + 4 + 60):
        data[i] ^= 0x5A
    data[at + 4 + n:at + 8 + n] = struct.pack(">I", zlib.crc32(bytes(data[at:at + 4 + n])) & 0xFFFFFFFF)
    return bytes(data)


def _damaged_jpeg_scan() -> bytes:
    """A JPEG whose entropy-coded segment holds marker bytes (0xFF runs) in its middle."""
    data = bytearray(_encoded("JPEG", quality=90))
    sos = data.find(b"\xff\xda")
    mid = sos + (len(data) - sos) // 2
    data[mid:mid + 50] = b"\xff" * 50
    return bytes(data)


def _damaged_webp() -> bytes:
    """A WebP cut inside its VP8 data (libwebp refuses it when Pillow opens it)."""
    data = _encoded("WEBP", quality=80)
    return data[: len(data) * 2 // 3]


@pytest.mark.parametrize("make,name", [(_damaged_idat_png, "idat.png"), (_damaged_jpeg_scan, "scan.jpg"),
                                       (_damaged_webp, "cut.webp")])
def test_a_damaged_file_is_corrupt_whatever_was_read_before_its_pixels(tmp_path, make, name):
    data = make()
    assert _pillow_fails(data)
    p = tmp_path / name
    p.write_bytes(data)
    assert _reason(p) in ("corrupt", "truncated")
    with pytest.raises(DecodeError):
        dec.probe_image(p) if name.endswith(".webp") else decode_image(p, draft=(32, 32))
    if name == "idat.png":
        assert _reason(p) == "corrupt"  # "broken data stream", not an image with made-up pixels


@pytest.mark.parametrize("fmt,kw", [("PNG", {}), ("JPEG", {"quality": 90}), ("WEBP", {"quality": 80}),
                                    ("WEBP", {"lossless": True}), ("GIF", {}), ("TIFF", {"compression": "tiff_deflate"}),
                                    ("BMP", {})])
def test_any_damage_pillow_cannot_decode_is_refused_never_unreadable(tmp_path, fmt, kw):
    """16 bytes flipped at 40 places over the file: wherever Pillow's own load raises, decode_image refuses
    the file with a decoder's reason (never 'ok', never the file system's 'unreadable')."""
    import warnings

    base = _encoded(fmt, **kw)
    p = tmp_path / f"x.{fmt.lower()}"
    refused = 0
    for at in range(0, len(base), max(1, len(base) // 40)):
        data = bytearray(base)
        for i in range(at, min(len(data), at + 16)):
            data[i] ^= 0xA5
        p.write_bytes(bytes(data))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            if not _pillow_fails(bytes(data)):
                continue
            reason = _reason(p)
        assert reason in ("corrupt", "truncated", "not-an-image", "too-large", "bad-size"), (at, reason)
        refused += 1
    assert refused >= 1
    p.write_bytes(base[: len(base) // 2])  # cut in half (a TIFF's directory sits at its end: not an image then)
    assert _reason(p) in ("corrupt", "truncated", "not-an-image")


def test_featurize_skips_a_png_with_damaged_idat_as_corrupt(tmp_path):
    from typer.testing import CliRunner

    from item.cli import app
    from item.store import StoreReader

    (tmp_path / "in").mkdir()
    _noise(64, 48, 1).save(tmp_path / "in" / "good.png")
    (tmp_path / "in" / "bad.png").write_bytes(_damaged_idat_png())
    r = CliRunner().invoke(app, ["featurize", str(tmp_path / "in"), "--store", str(tmp_path / "s"), "--models",
                                 "tiny-random", "--workers", "0", "--label", "real"])
    assert r.exit_code == 0, (r.stdout, r.stderr)
    with StoreReader(tmp_path / "s") as rd:
        m = rd.metadata()
    by_name = {os.path.basename(p): (s, why) for p, s, why in zip(m["path"], m["status"], m["reason"])}
    assert by_name["good.png"][0] == "ok"
    assert by_name["bad.png"] == ("skipped", "corrupt"), by_name
