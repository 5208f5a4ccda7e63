"""Evaluation inputs: discovery, deterministic preprocessing and clip selection, and the errors for bad files."""

from __future__ import annotations

import pytest
import torch

from fastdecoders.errors import FastDecodersError
from fastdecoders.eval.data import Preprocess, discover, load
from fastdecoders.io import write_image, write_video


def _image(path, h=40, w=56, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return write_image(torch.rand(3, h, w, generator=gen), path)


def _video(path, frames=12, h=32, w=48):
    t = torch.linspace(0, 1, frames).view(frames, 1, 1, 1)
    return write_video((torch.rand(1, 3, h, w) * 0.5 + 0.5 * t).clamp(0, 1), path, fps=8)


def test_empty_folder_is_one_clear_error(tmp_path):
    (tmp_path / "notes.txt").write_text("not an image")
    with pytest.raises(FastDecodersError, match="holds no images"):
        discover("images", tmp_path, Preprocess())
    with pytest.raises(FastDecodersError, match="neither a folder"):
        discover("images", tmp_path / "missing", Preprocess())


def test_images_are_found_sorted_with_unique_keys_and_a_list_file_works(tmp_path):
    _image(tmp_path / "b.png")
    _image(tmp_path / "sub" / "a.png")
    _image(tmp_path / "a.png")
    items = discover("images", tmp_path, Preprocess())
    assert [i.key for i in items] == ["a.png", "b.png", "sub__a.png"]
    listing = tmp_path / "list.txt"
    listing.write_text("# chosen photos\nsub/a.png\n\nmissing.png\n")
    listed = discover("images", listing, Preprocess(), limit=None)
    assert [i.path.name for i in listed] == ["a.png", "missing.png"]  # the missing one is skipped when loaded
    with pytest.raises(FastDecodersError, match="not a readable image"):
        load(listed[1], Preprocess())


def test_listed_files_with_one_name_get_distinct_keys(tmp_path):
    _image(tmp_path / "x" / "same.png")
    _image(tmp_path / "y" / "same.png", seed=1)
    listing = tmp_path / "lists" / "two.txt"
    listing.parent.mkdir()
    listing.write_text(f"{tmp_path / 'x' / 'same.png'}\n{tmp_path / 'y' / 'same.png'}\n")
    assert [i.key for i in discover("images", listing, Preprocess())] == ["x__same.png", "y__same.png"]


def test_preprocessing_is_deterministic_crop_or_resize(tmp_path):
    item = discover("images", _image(tmp_path / "x.png", 45, 70).parent, Preprocess())[0]
    native = load(item, Preprocess(multiple=8)).pixels
    assert native.shape == (1, 3, 40, 64)  # centre crop to multiples of 8, no resampling
    square = load(item, Preprocess(size=32, multiple=8)).pixels
    assert square.shape == (1, 3, 32, 32)
    assert torch.equal(square, load(item, Preprocess(size=32, multiple=8)).pixels)
    with pytest.raises(FastDecodersError, match="multiple of 8"):
        Preprocess(size=30)


def test_truncated_image_is_a_clear_error(tmp_path):
    path = tmp_path / "cut.jpg"
    _image(path, 64, 64)
    path.write_bytes(path.read_bytes()[:200])
    item = discover("images", tmp_path, Preprocess())[0]
    with pytest.raises(FastDecodersError, match="cut.jpg is not a readable image"):
        load(item, Preprocess())


def test_videos_and_frame_folders_become_clips(tmp_path):
    _video(tmp_path / "v.mp4", frames=12)
    for t in range(6):
        _image(tmp_path / "frames" / f"{t:03d}.png", 32, 48, seed=t)
    prep = Preprocess(clip_length=3, frame_step=2, clips_per_video=2)
    items = discover("videos", tmp_path, prep)
    assert [(i.path.name, i.index) for i in items] == [("frames", 0), ("frames", 1), ("v.mp4", 0), ("v.mp4", 1)]
    clip = load(items[2], prep)
    assert clip.pixels.shape == (3, 3, 32, 48) and clip.fps == pytest.approx(4.0)  # every 2nd frame of 8 fps
    second = load(items[3], prep)  # frames 6, 8, 10: brighter than the first clip (the test video fades up)
    assert second.pixels.mean() > clip.pixels.mean()
    with pytest.raises(FastDecodersError, match="has 6 frames; clip 1 needs frames 6..10"):
        load(items[1], prep)


def test_clip_shorter_than_the_clip_length_is_a_clear_error(tmp_path):
    _video(tmp_path / "short.mp4", frames=5)
    prep = Preprocess(clip_length=9)
    with pytest.raises(FastDecodersError, match="has 5 frames; a clip needs 9"):
        load(discover("videos", tmp_path, prep)[0], prep)


def test_unreadable_video_is_a_clear_error(tmp_path):
    (tmp_path / "junk.mkv").write_bytes(b"\x1aE\xdf\xa3 this is not a matroska file")
    prep = Preprocess(clip_length=2)
    with pytest.raises(FastDecodersError, match="junk.mkv is not a readable video"):
        load(discover("videos", tmp_path, prep)[0], prep)


def test_latent_files_expand_batches(tmp_path):
    from fastdecoders.io import write_latents

    write_latents(torch.randn(3, 4, 8, 8), tmp_path / "batch.safetensors")
    write_latents(torch.randn(4, 8, 8), tmp_path / "single.safetensors")
    items = discover("latents", tmp_path, Preprocess(), latent_ndim=3)
    assert [i.key for i in items] == ["batch.safetensors#0", "batch.safetensors#1", "batch.safetensors#2",
                                      "single.safetensors"]  # fmt: skip
    assert load(items[1], Preprocess(), latent_ndim=3).latents.shape == (4, 8, 8)
    assert load(items[3], Preprocess(), latent_ndim=3).latents.shape == (4, 8, 8)


@pytest.mark.parametrize("suffix, codec, pix_fmt", [(".avi", "mpeg4", "yuv420p"), (".mkv", "ffv1", "yuv444p")])
def test_avi_and_mkv_clips_are_read_through_pyav(tmp_path, suffix, codec, pix_fmt):
    av = pytest.importorskip("av")
    import numpy as np

    path = tmp_path / f"ramp{suffix}"
    with av.open(str(path), "w") as container:
        stream = container.add_stream(codec, rate=8)
        stream.width, stream.height, stream.pix_fmt = 48, 32, pix_fmt
        for t in range(7):  # frame t is a flat grey of level 30·t
            frame = av.VideoFrame.from_ndarray(np.full((32, 48, 3), 30 * t, np.uint8), format="rgb24")
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    prep = Preprocess(clip_length=3, frame_step=2, clips_per_video=2)
    items = discover("videos", tmp_path, prep)
    assert [(i.path.name, i.index) for i in items] == [(path.name, 0), (path.name, 1)]
    first = load(items[0], prep)  # frames 0, 2, 4
    assert first.pixels.shape == (3, 3, 32, 48) and first.fps == pytest.approx(4.0)
    levels = first.pixels.mean((1, 2, 3)) * 255
    torch.testing.assert_close(levels, torch.tensor([0.0, 60.0, 120.0]), atol=3.0, rtol=0)
    with pytest.raises(FastDecodersError, match="has 7 frames; clip 1 needs frames 6..10"):
        load(items[1], prep)
