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
