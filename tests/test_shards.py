"""Latents shards (fastdecoders.shards): round trip, plain latents files, listing, and one-line errors."""

from __future__ import annotations

import pytest
import torch

from fastdecoders.errors import FastDecodersError
from fastdecoders.io import write_latents
from fastdecoders.shards import Shard, list_shards, read_header, read_shard, write_shard


def test_round_trip_keeps_tensors_ids_prompts_and_metadata(tmp_path):
    z = torch.randn(3, 4, 8, 8)
    pixels = torch.randint(0, 256, (3, 3, 64, 64), dtype=torch.uint8)
    shard = Shard(z, ["a", "b", "c"], ["cat", "dog", "owl"], {"pixels": pixels}, "sdxl", "taesdxl_encoder",
                  "taesdxl", [{"source": "a.png"}, {"source": "b.png"}, {"source": "c.png"}], {"split": "train"})
    path = write_shard(tmp_path / "s.safetensors", shard)
    back = read_shard(path)
    assert torch.equal(back.latents, z) and torch.equal(back.tensors["pixels"], pixels)
    assert (back.ids, back.prompts, back.latent_space, back.encoder, back.decoder) == (
        ["a", "b", "c"], ["cat", "dog", "owl"], "sdxl", "taesdxl_encoder", "taesdxl")
    assert back.items[1] == {"source": "b.png"} and back.extra == {"split": "train"}
    assert read_header(path)["count"] == 3 and read_shard(path, tensors=()).tensors == {}
    assert [p.name for p in tmp_path.iterdir()] == ["s.safetensors"]  # no temp file left behind


def test_a_plain_latents_file_reads_as_a_shard(tmp_path):
    path = write_latents(torch.randn(2, 4, 8, 8), tmp_path / "old.safetensors")
    shard = read_shard(path)
    assert len(shard) == 2 and shard.ids == ["old-00000", "old-00001"] and shard.latent_space is None
    torch.save(torch.randn(4, 8, 8), tmp_path / "one.pt")
    assert read_shard(tmp_path / "one.pt").latents.shape == (1, 4, 8, 8)


def test_listing_folders_globs_and_files_each_once(tmp_path):
    for name in ("b", "a"):
        write_shard(tmp_path / f"{name}.safetensors", Shard(torch.zeros(1, 4, 2, 2), [name]))
    found = list_shards([tmp_path, str(tmp_path / "*.safetensors"), tmp_path / "a.safetensors"])
    assert [p.name for p in found] == ["a.safetensors", "b.safetensors"]
    with pytest.raises(FastDecodersError, match="found none"):
        list_shards([str(tmp_path / "nothing-*.safetensors")])


def test_bad_shards_fail_with_one_line(tmp_path):
    with pytest.raises(FastDecodersError, match="unique ids"):
        Shard(torch.zeros(2, 4, 2, 2), ["x", "x"])
    with pytest.raises(FastDecodersError, match="2 entries"):
        Shard(torch.zeros(2, 4, 2, 2), ["x", "y"], prompts=["only one"])
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json")
    with pytest.raises(FastDecodersError, match="not a readable latents shard") as e:
        read_shard(bad)
    assert "\n" not in str(e.value)


def test_items_of_different_sizes_are_padded_and_cropped_back(tmp_path):
    items = [{"latents": torch.randn(4, 8, 12), "pixels": torch.ones(3, 64, 96, dtype=torch.uint8)},
             {"latents": torch.randn(4, 12, 8), "pixels": torch.ones(3, 96, 64, dtype=torch.uint8)}]
    shard = read_shard(write_shard(tmp_path / "r.safetensors", Shard.from_items(items, ["land", "port"])))
    assert shard.ragged and shard.latents.shape == (2, 4, 12, 12) and shard.tensors["pixels"].shape == (2, 3, 96, 96)
    for i, item in enumerate(items):
        back = shard.item(i)
        assert torch.equal(back["latents"], item["latents"]) and torch.equal(back["pixels"], item["pixels"])
