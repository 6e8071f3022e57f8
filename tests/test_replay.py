"""Sequence replay: windows, flags, streams, FIFO, memory layout, memmap persistence, sample counts."""

from __future__ import annotations

import json
import tracemalloc

import numpy as np
import pytest
import torch

from hieros.replay import HierarchyReplay, Replay
from hieros.samplers import BaseSampler
from hieros.samplers.tbs import TimeBalanced


class Scripted(BaseSampler):
    """Returns the item indices it is told to, so tests can address items exactly."""

    def __init__(self) -> None:
        self.next: list[int] = []
        self.seen_n: list[int] = []

    def indices(self, n: int, count: int, rng: np.random.Generator) -> np.ndarray:
        self.seen_n.append(n)
        return np.asarray(self.next[:count], dtype=np.int64)


def _spec(image_shape: tuple[int, ...] = (4, 4, 3)) -> dict:
    return {
        "image": (image_shape, np.uint8),
        "action": ((3,), np.float32),
        "reward": ((), np.float32),
        "step": ((), np.int64),
        "is_first": ((), bool),
        "is_last": ((), bool),
        "is_terminal": ((), bool),
    }


def _step(t: int, num_streams: int, episode_length: int = 7, image_shape: tuple[int, ...] = (4, 4, 3)) -> dict:
    """Step t of every stream; stream s is offset by 1000·s, episodes last ``episode_length`` steps."""
    streams = np.arange(num_streams)
    value = 1000 * streams + t
    return {
        "image": np.broadcast_to((value % 256).astype(np.uint8)[:, None, None, None], (num_streams, *image_shape)),
        "action": np.eye(3, dtype=np.float32)[value % 3],
        "reward": value.astype(np.float32),
        "step": value.astype(np.int64),
        "is_first": np.full(num_streams, t % episode_length == 0),
        "is_last": np.full(num_streams, t % episode_length == episode_length - 1),
        "is_terminal": np.full(num_streams, t % episode_length == episode_length - 1),
    }


def _filled(steps: int, num_streams: int = 1, capacity: int = 1000, window: int = 5, **kwargs) -> Replay:
    replay = Replay(_spec(), capacity=capacity, num_streams=num_streams, window=window, **kwargs)
    for t in range(steps):
        replay.add(_step(t, num_streams))
    return replay


def _all_windows(replay: Replay) -> dict[str, np.ndarray]:
    """Every item, oldest first, gathered through the public sample() with a scripted sampler."""
    sampler, replay.sampler = replay.sampler, Scripted()
    replay.sampler.next = list(range(len(replay)))
    batch = replay.sample(len(replay), np.random.default_rng(0))
    replay.sampler = sampler
    return batch


# ----------------------------------------------------------------- windows
def test_windows_are_consecutive_steps_with_flags_across_episode_boundaries() -> None:
    replay = _filled(30, window=5)
    windows = _all_windows(replay)
    assert windows["step"].shape == (26, 5) and windows["image"].shape == (26, 5, 4, 4, 3)
    assert np.array_equal(windows["step"], np.arange(26)[:, None] + np.arange(5))
    steps = windows["step"]
    assert np.array_equal(windows["reward"], steps.astype(np.float32))
    assert np.array_equal(windows["action"], np.eye(3, dtype=np.float32)[steps % 3])
    assert np.array_equal(windows["is_last"], steps % 7 == 6)
    assert np.array_equal(windows["is_terminal"], steps % 7 == 6)
    # Windows cross episode boundaries; is_first marks them inside and is forced at the first step.
    assert np.array_equal(windows["is_first"][:, 1:], steps[:, 1:] % 7 == 0)
    assert windows["is_first"][:, 0].all()
    crossing = (steps[:, 1:] % 7 == 0).any(axis=1)
    assert crossing.sum() > 5


def test_is_first_is_forced_in_the_copy_not_in_storage() -> None:
    replay = _filled(20, window=5)
    replay.sampler = Scripted()
    replay.sampler.next = [3]  # window over steps 3..7: step 3 is mid-episode
    first = replay.sample(1, np.random.default_rng(0))
    assert first["is_first"][0].tolist() == [True, False, False, False, True]
    first["reward"][0, 0] = -1.0  # the batch is a copy
    replay.sampler.next = [2]  # steps 2..6 contain step 3 at position 1: storage still says False there
    second = replay.sample(1, np.random.default_rng(0))
    assert second["is_first"][0].tolist() == [True, False, False, False, False]
    assert second["reward"][0, 1] == 3.0


def test_item_count_is_steps_minus_window_plus_one_per_stream() -> None:
    replay = Replay(_spec(), capacity=300, num_streams=3, window=8)
    for t in range(20):
        assert len(replay) == 3 * max(0, t - 8 + 1)
        assert replay.steps == 3 * t
        replay.add(_step(t, 3))
    assert len(replay) == 3 * (20 - 8 + 1) and replay.steps == 60


def test_sampling_before_a_full_window_is_refused() -> None:
    replay = _filled(4, window=5)
    with pytest.raises(RuntimeError, match="no complete window"):
        replay.sample(2, np.random.default_rng(0))


def test_fifo_eviction_keeps_the_newest_steps() -> None:
    capacity, window = 20, 5
    replay = _filled(57, capacity=capacity, window=window)
    assert replay.steps == capacity and len(replay) == capacity - window + 1
    windows = _all_windows(replay)
    oldest = 57 - capacity
    assert np.array_equal(windows["step"], oldest + np.arange(len(replay))[:, None] + np.arange(window))
    assert windows["step"][0, 0] == 37 and windows["step"][-1, -1] == 56


def test_streams_never_mix_and_items_are_ordered_by_end_step_then_stream() -> None:
    num_streams, window = 3, 4
    replay = _filled(50, num_streams=num_streams, capacity=3 * 16, window=window)
    windows = _all_windows(replay)
    stream = windows["step"] // 1000
    assert (stream == stream[:, :1]).all()  # one stream per window
    time = windows["step"] % 1000
    assert (np.diff(time, axis=1) == 1).all()
    assert np.array_equal(stream[:, 0], np.arange(len(replay)) % num_streams)
    end = time[:, -1]
    assert (np.diff(end) >= 0).all() and end[0] == 50 - 16 + window - 1 and end[-1] == 49


def test_random_batches_from_a_real_sampler_are_valid_windows() -> None:
    replay = _filled(200, num_streams=2, capacity=2 * 64, window=16, sampler=TimeBalanced(1.0))
    for seed in range(5):
        batch = replay.sample(16, np.random.default_rng(seed))
        assert batch["image"].shape == (16, 16, 4, 4, 3) and batch["image"].dtype == np.uint8
        assert (np.diff(batch["step"], axis=1) == 1).all()
        assert np.array_equal(batch["image"][..., 0, 0, 0], (batch["step"] % 256).astype(np.uint8))
    uniform = _filled(200, num_streams=2, capacity=2 * 64, window=16)
    first, second = (uniform.sample(4, np.random.default_rng(3))["step"] for _ in range(2))
    assert np.array_equal(first, second)  # the caller's generator alone decides the batch


# ---------------------------------------------------------------- memory
def test_uint8_storage_and_bytes_per_step() -> None:
    spec = _spec((64, 64, 3))
    replay = Replay(spec, capacity=2000, num_streams=2, window=64)
    raw_observation = 64 * 64 * 3
    small = 3 * 4 + 4 + 8 + 3  # action, reward, step, three flags
    assert replay.nbytes / replay.capacity <= 1.05 * raw_observation + small
    assert replay.nbytes / replay.capacity >= raw_observation + small
    for t in range(100):
        replay.add(_step(t, 2, image_shape=(64, 64, 3)))
    batch = replay.sample(4, np.random.default_rng(0))
    assert batch["image"].dtype == np.uint8 and batch["is_first"].dtype == np.bool_
    assert batch["image"].shape == (4, 64, 64, 64, 3)


def test_adding_steps_allocates_no_per_step_objects() -> None:
    replay = Replay(_spec((16, 16, 3)), capacity=4000, num_streams=2, window=8)
    steps = [_step(t, 2, image_shape=(16, 16, 3)) for t in range(1000)]
    replay.add(steps[0])
    tracemalloc.start()
    before = tracemalloc.take_snapshot()
    for step in steps[1:]:
        replay.add(step)
    after = tracemalloc.take_snapshot()
    tracemalloc.stop()
    growth = sum(stat.size_diff for stat in after.compare_to(before, "filename"))
    assert replay.steps == 2000
    assert growth < 20_000  # a dict or array per step would be ≥ 1000 × 100 bytes


# ----------------------------------------------------------- validation
def test_bad_steps_and_layouts_are_refused() -> None:
    replay = Replay(_spec(), capacity=100, num_streams=2, window=5)
    step = _step(0, 2)
    with pytest.raises(KeyError, match="missing"):
        replay.add({k: v for k, v in step.items() if k != "reward"})
    with pytest.raises(KeyError, match="unknown"):
        replay.add({**step, "extra": np.zeros(2)})
    with pytest.raises(ValueError, match="leading axis"):
        replay.add({**step, "image": step["image"][0]})
    with pytest.raises(TypeError, match="uint8"):
        replay.add({**step, "image": step["image"].astype(np.float32)})
    with pytest.raises(ValueError, match="fewer than one window"):
        Replay(_spec(), capacity=8, num_streams=2, window=5)
    with pytest.raises(ValueError, match="shape, dtype"):
        Replay({"image": (64, 64)}, capacity=100, num_streams=1, window=5)
    with pytest.raises(ValueError, match="positive integer"):
        Replay(_spec(), capacity=100, num_streams=0, window=5)
    assert replay.steps == 0  # refused steps left nothing behind


# ----------------------------------------------------------- sample counts
def test_sample_counts_increment_and_follow_eviction() -> None:
    replay = _filled(12, capacity=12, window=5)  # 8 items, ring full
    replay.sampler = Scripted()
    replay.sampler.next = [0, 0, 3, 7]
    replay.sample(4, np.random.default_rng(0))
    assert replay.sample_counts.tolist() == [2, 0, 0, 1, 0, 0, 0, 1]
    replay.add(_step(12, 1))  # evicts item 0, adds a new item with count 0
    assert replay.sample_counts.tolist() == [0, 0, 1, 0, 0, 0, 1, 0]


def test_tbs_visits_stay_aligned_with_replay_sample_counts_through_eviction() -> None:
    rng = np.random.default_rng(1)
    replay = Replay(_spec(), capacity=2 * 30, num_streams=2, window=5, sampler=TimeBalanced(1.0))
    for t in range(200):
        replay.add(_step(t, 2))
        if len(replay):
            replay.sample(3, rng)
    assert replay.sample_counts.sum() > 0
    assert np.array_equal(replay.sampler.visits, replay.sample_counts)


# ------------------------------------------------------------ persistence
def test_memmap_round_trip_discards_steps_after_the_saved_state(tmp_path) -> None:
    directory = tmp_path / "replay"
    replay = _filled(50, num_streams=2, capacity=2 * 60, window=5, directory=directory)  # ring not wrapped
    replay.sample(8, np.random.default_rng(0))
    replay.flush()
    state = replay.state_dict()
    expected_counts = replay.sample_counts  # before _all_windows, which samples every item once more
    expected = _all_windows(replay)
    for t in range(50, 60):  # after the checkpoint: must not come back
        replay.add(_step(t, 2))
    replay.flush()
    assert (directory / "image.npy").exists() and (directory / "replay.json").exists()

    resumed = Replay(_spec(), capacity=2 * 60, num_streams=2, window=5, directory=directory)
    resumed.load_state_dict(state)
    assert len(resumed) == len(expected["step"]) == 2 * 46 and resumed.steps == 100
    assert np.array_equal(resumed.sample_counts, expected_counts)
    restored = _all_windows(resumed)
    for name in expected:
        assert np.array_equal(restored[name], expected[name]), name
    resumed.add(_step(50, 2))  # continues from the saved step
    assert _all_windows(resumed)["step"][-1, -1] == 1000 + 50


def test_steps_overwritten_after_the_checkpoint_are_dropped_with_a_warning(tmp_path) -> None:
    replay = _filled(50, capacity=40, window=5, directory=tmp_path)
    state = replay.state_dict()  # holds steps 10..49
    for t in range(50, 75):  # overwrites the ring slots of steps 10..34
        replay.add(_step(t, 1))
    replay.flush()
    resumed = Replay(_spec(), capacity=40, num_streams=1, window=5, directory=tmp_path)
    with pytest.warns(UserWarning, match="overwritten"):
        resumed.load_state_dict(state)
    windows = _all_windows(resumed)
    assert np.array_equal(windows["step"], 35 + np.arange(11)[:, None] + np.arange(5))


def test_tbs_sampler_state_travels_with_the_replay_state(tmp_path) -> None:
    replay = _filled(40, capacity=100, window=5, directory=tmp_path, sampler=TimeBalanced(1.0))
    for seed in range(10):
        replay.sample(4, np.random.default_rng(seed))
    state = replay.state_dict()
    resumed = Replay(_spec(), capacity=100, num_streams=1, window=5, directory=tmp_path, sampler=TimeBalanced(1.0))
    resumed.load_state_dict(state)
    assert np.array_equal(resumed.sampler.visits, replay.sampler.visits)
    assert np.array_equal(
        resumed.sample(4, np.random.default_rng(99))["step"], replay.sample(4, np.random.default_rng(99))["step"]
    )


def test_in_memory_replay_returns_to_its_own_state() -> None:
    replay = _filled(30, window=5)
    state = replay.state_dict()
    expected = _all_windows(replay)
    for t in range(30, 35):
        replay.add(_step(t, 1))
    replay.load_state_dict(state)
    assert np.array_equal(_all_windows(replay)["step"], expected["step"])
    with pytest.raises(ValueError, match="different replay storage"):
        _filled(30, window=5).load_state_dict(state)


def test_directory_with_another_layout_is_refused(tmp_path) -> None:
    _filled(10, capacity=100, window=5, directory=tmp_path).flush()
    layout = json.loads((tmp_path / "replay.json").read_text())
    assert layout["capacity"] == 100 and layout["fields"]["image"] == {"shape": [4, 4, 3], "dtype": "|u1"}
    with pytest.raises(ValueError, match="different layout"):
        Replay(_spec(), capacity=200, num_streams=1, window=5, directory=tmp_path)
    with pytest.raises(ValueError, match="different layout"):
        Replay({**_spec(), "image": ((4, 4, 3), np.float32)}, capacity=100, num_streams=1, window=5, directory=tmp_path)
    with pytest.raises(ValueError, match="different layout"):
        Replay(_spec(), capacity=100, num_streams=2, window=5, directory=tmp_path)
    with pytest.raises(ValueError, match="window"):
        reopened = Replay(_spec(), capacity=100, num_streams=1, window=6, directory=tmp_path)
        reopened.load_state_dict(_filled(10, capacity=100, window=5).state_dict())


def test_state_newer_than_the_stored_data_is_refused(tmp_path) -> None:
    replay = _filled(20, capacity=100, window=5, directory=tmp_path)
    state = replay.state_dict()
    state["added"] = 25  # as if the checkpoint were newer than the data on disk
    with pytest.raises(ValueError, match="older than the checkpoint"):
        Replay(_spec(), capacity=100, num_streams=1, window=5, directory=tmp_path).load_state_dict(state)


def test_new_run_over_an_old_directory_starts_fresh(tmp_path) -> None:
    old = _filled(20, capacity=100, window=5, directory=tmp_path)
    old_state = old.state_dict()
    fresh = Replay(_spec(), capacity=100, num_streams=1, window=5, directory=tmp_path)
    assert len(fresh) == 0
    with pytest.warns(UserWarning, match="starting a new replay"):
        fresh.add(_step(500, 1))
    assert fresh.steps == 1
    with pytest.raises(ValueError, match="different replay storage"):
        Replay(_spec(), capacity=100, num_streams=1, window=5, directory=tmp_path).load_state_dict(old_state)


def test_unknown_files_in_a_directory_are_not_overwritten(tmp_path) -> None:
    np.save(tmp_path / "image.npy", np.arange(3))
    with pytest.raises(FileExistsError, match="image.npy"):
        Replay(_spec(), capacity=100, num_streams=1, window=5, directory=tmp_path)
    assert np.array_equal(np.load(tmp_path / "image.npy"), np.arange(3))


def test_read_only_replay_reads_a_stream_in_order_and_never_writes(tmp_path) -> None:
    directory = tmp_path / "replay"
    replay = _filled(70, num_streams=2, capacity=2 * 60, window=5, directory=directory)  # wrapped: steps 10..69
    replay.flush()
    state = replay.state_dict()
    before = {path.name: path.read_bytes() for path in directory.iterdir()}

    reader = Replay(_spec(), capacity=2 * 60, num_streams=2, window=5, directory=directory, read_only=True)
    reader.load_state_dict(state)
    assert reader.read(1)["step"].tolist() == [1000 + t for t in range(10, 70)]  # oldest first across the wrap
    part = reader.read(0, 3, 8, fields=("step", "is_first"))
    assert sorted(part) == ["is_first", "step"] and part["step"].tolist() == list(range(13, 18))
    assert part["is_first"].tolist() == [t % 7 == 0 for t in range(13, 18)]  # as stored: no forced first step
    reader.sample(4, np.random.default_rng(0))
    reader.flush()
    with pytest.raises(RuntimeError, match="read-only"):
        reader.add(_step(70, 2))
    with pytest.raises(IndexError, match="2 stream"):
        reader.read(2)
    assert {path.name: path.read_bytes() for path in directory.iterdir()} == before
    with pytest.raises(FileNotFoundError, match="no replay to read"):
        Replay(_spec(), capacity=120, num_streams=2, window=5, directory=tmp_path / "none", read_only=True)
    assert not (tmp_path / "none").exists()


# ----------------------------------------------------------------- a full disk
def test_disk_blocks_are_reserved_ahead_so_a_full_disk_is_an_error_not_a_crash(tmp_path, monkeypatch) -> None:
    """The fields are sparse memory maps; without reserved blocks a full disk kills the process with SIGBUS."""
    import errno
    import os

    from hieros.replay import ReplayDiskFullError
    from hieros.replay.buffer import RESERVE_STEPS

    capacity = 2 * RESERVE_STEPS + 10
    reserved: list[tuple[int, int]] = []
    real = os.posix_fallocate

    def recording(fd, offset, length):
        reserved.append((offset, length))
        return real(fd, offset, length)

    monkeypatch.setattr(os, "posix_fallocate", recording)
    replay = Replay(_spec(), capacity=capacity, num_streams=2, window=5, directory=tmp_path / "replay")
    replay.add(_step(0, 2))
    image = np.load(tmp_path / "replay" / "image.npy", mmap_mode="r")
    row = 4 * 4 * 3
    per_stream = capacity // 2
    assert (image.offset, RESERVE_STEPS * row) in reserved  # stream 0, steps [0, 1024) of the image field
    assert (image.offset + per_stream * row, RESERVE_STEPS * row) in reserved  # stream 1
    for t in range(1, RESERVE_STEPS + 1):
        replay.add(_step(t, 2))
    assert (image.offset + RESERVE_STEPS * row, (per_stream - RESERVE_STEPS) * row) in reserved  # the short tail chunk

    def full(fd, offset, length):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "posix_fallocate", full)
    fresh = Replay(_spec(), capacity=capacity, num_streams=2, window=5, directory=tmp_path / "other")
    with pytest.raises(ReplayDiskFullError) as error:
        fresh.add(_step(0, 2))
    message = str(error.value)
    assert (
        str(tmp_path / "other") in message and "MiB free" in message and "resumes from the last checkpoint" in message
    )
    assert len(fresh) == 0 and fresh.steps == 0  # nothing was half-written


# ---------------------------------------------------------------- HierarchyReplay (one replay per level)
def _hierarchy_replay(specs, tmp_path=None, num_streams: int = 1, min_windows: int = 3) -> HierarchyReplay:
    return HierarchyReplay(
        specs,
        capacity=200,
        num_streams=num_streams,
        window=5,
        make_sampler=Scripted,
        directory=tmp_path,
        batch_size=2,
        min_windows=min_windows,
    )


def test_hierarchy_replay_store_each_level_its_own_rows_and_sample_as_tensors(tmp_path):
    replays = _hierarchy_replay([_spec(), None, _spec()], tmp_path)
    assert replays[1] is None and replays[0].sampler is not replays[2].sampler  # a sampler per replay
    assert [path.name for path in sorted(tmp_path.iterdir())] == ["level0", "level2"]
    for t in range(9):  # level 0 every step, level 2 every third step (level 1: no replay, rows ignored)
        rows = [
            {**_step(t, 1), "env": [0]},
            {**_step(t, 1), "env": [0]},
            {**_step(t, 1), "env": [0]} if t % 3 == 0 else None,
        ]
        replays.store(rows)
    assert replays.report() == {"replay/level0_steps": 9, "replay/level2_steps": 3}
    assert replays.ready  # level 0: 5 windows of 5 steps in 9 steps >= 3
    assert replays.sample(2, np.random.default_rng(0), torch.device("cpu")) is None  # no complete window yet
    assert replays.sample(1, np.random.default_rng(0), torch.device("cpu")) is None  # no replay at all
    replays[0].sampler.next = [4, 0]
    batch = replays.sample(0, np.random.default_rng(0), torch.device("cpu"))
    assert isinstance(batch["reward"], torch.Tensor) and batch["reward"].shape == (2, 5)
    assert batch["reward"][:, 0].tolist() == [4.0, 0.0]
    assert set(replays.stateful()) == {"replay/level0", "replay/level2"}


def test_hierarchy_replay_not_ready_before_min_windows_and_refuse_streams_out_of_step():
    replays = _hierarchy_replay([_spec()], min_windows=3)
    for t in range(6):  # 2 windows
        replays.store([{**_step(t, 1), "env": [0]}])
    assert not replays.ready
    replays.store([{**_step(6, 1), "env": [0]}])
    assert replays.ready
    two_streams = _hierarchy_replay([_spec(), _spec()], num_streams=2)
    with pytest.raises(NotImplementedError, match="training.num_envs=1"):
        two_streams.store([{**_step(0, 2), "env": [0, 1]}, {**_step(0, 1), "env": [1]}])
