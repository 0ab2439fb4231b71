"""``ppplan profile-comm``: alpha–beta fits (pure) and a short two-process gloo run (dist)."""

import json

import pytest

from launch.profiler.comm import (
    CommSettings,
    fit_alpha_beta,
    message_sizes,
    parse_bytes,
    predicted_s,
    ring_coefficients,
)
from planner.cli.main import run
from profiles.errors import PlanError
from profiles.loader import read_comm_profile
from profiles.profile_schema import COLLECTIVES, AlphaBetaFit, CollectiveMeasurement


def test_message_sizes_are_powers_of_four_from_1_kib_to_256_mib():
    sizes = message_sizes(1024, 256 * 2**20)
    assert sizes == [1024 * 4**i for i in range(10)]
    assert message_sizes(1024, 5000) == [1024, 4096, 5000]


@pytest.mark.parametrize("text, expected", [("1048576", 2**20), ("64KiB", 65536), ("1MiB", 2**20), ("256M", 256 * 2**20), ("1g", 2**30)])
def test_parse_bytes(text, expected):
    assert parse_bytes(text) == expected


def test_parse_bytes_rejects_garbage():
    with pytest.raises(PlanError):
        parse_bytes("lots")


@pytest.mark.parametrize("text", ["nan", "inf", "nanKiB", "2048G", "9" * 5000])
def test_parse_bytes_refuses_sizes_no_message_has(text):
    """Were an OverflowError or ValueError traceback (float to int) before session 50."""
    with pytest.raises(PlanError, match="is not a size up to 1 TiB"):
        parse_bytes(text)


def test_ring_coefficients_are_those_costmodels_prices():
    assert ring_coefficients("all_reduce", 4) == (6.0, 1.5)
    assert ring_coefficients("reduce_scatter", 4) == (3.0, 0.75) == ring_coefficients("all_gather", 4)
    assert ring_coefficients("p2p", 2) == (1.0, 1.0)


def test_fit_recovers_alpha_and_beta_from_exact_ring_times():
    truth = AlphaBetaFit(latency_us=50.0, bandwidth_gbs=1.5, rms_relative_error=0.0, num_points=1)
    rows = [
        CollectiveMeasurement(collective=c, group_size=2 if c == "p2p" else 4, size_bytes=n,
                              median_s=predicted_s(truth, c, 2 if c == "p2p" else 4, n), iqr_s=0.0, repeats=3)
        for c in COLLECTIVES for n in message_sizes(1024, 2**24)
    ]
    fit = fit_alpha_beta(rows)
    assert fit.latency_us == pytest.approx(50.0, rel=1e-6)
    assert fit.bandwidth_gbs == pytest.approx(1.5, rel=1e-6)
    assert fit.rms_relative_error < 1e-9 and fit.num_points == len(rows)


def test_fit_never_returns_a_negative_latency():
    # pure bandwidth with a little noise that would pull alpha below 0
    rows = [CollectiveMeasurement(collective="p2p", group_size=2, size_bytes=n, median_s=n / 1e9 * f, iqr_s=0.0, repeats=3)
            for n, f in [(1024, 0.9), (4096, 1.0), (16384, 1.0), (65536, 1.0)]]
    fit = fit_alpha_beta(rows)
    assert fit.latency_us == 0.0 and fit.bandwidth_gbs == pytest.approx(1.0, rel=0.1)


@pytest.mark.parametrize("argv", [["--backend", "mpi"], ["--nproc", "1"], ["--max-bytes", "lots"], ["--max-bytes", "512"]])
def test_bad_input_exits_2_with_one_error_line(argv, tmp_path, capsys):
    code = run(["profile-comm", "--out", str(tmp_path / "c.json")] + argv)
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert code == 2 and len(lines) == 1 and lines[0].startswith("error: ")


def test_nccl_without_gpus_is_bad_input(tmp_path, capsys):
    torch = pytest.importorskip("torch")
    if torch.cuda.device_count() >= 2:
        pytest.skip("GPUs present")
    assert run(["profile-comm", "--backend", "nccl", "--out", str(tmp_path / "c.json")]) == 2


@pytest.mark.dist
def test_two_gloo_processes_measure_every_collective_and_fit(tmp_path):
    pytest.importorskip("torch")
    out = tmp_path / "comm.json"
    code = run(["profile-comm", "--nproc", "2", "--backend", "gloo", "--max-bytes", "16KiB", "--repeats", "3", "--out", str(out)])
    assert code == 0
    comm = read_comm_profile(out)
    assert {(m.collective, m.size_bytes) for m in comm.measurements} == {(c, n) for c in COLLECTIVES for n in (1024, 4096, 16384)}
    tier = comm.tier("intra_node")
    assert tier is not None and tier.group_size == 2 and set(tier.per_collective) == set(COLLECTIVES)
    assert tier.overall.bandwidth_gbs > 0 and all(m.median_s > 0 for m in comm.measurements)
    assert json.loads(out.read_text())["backend"] == "gloo"
    assert CommSettings().max_bytes == 256 * 2**20
