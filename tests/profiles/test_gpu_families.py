"""GPU families (``profiles/gpu_families.yaml``): constants belong to the GPU, cluster files
that set their own keep them, old cluster files still load, bad family files are refused."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from profiles.errors import PlanError
from profiles.gpu_families import (
    GENERIC_FAMILY,
    FamilyConstants,
    FamilyFit,
    GpuFamily,
    render_families,
    with_family_constants,
)
from profiles.loader import GPU_FAMILIES_YAML, load_cluster, load_gpu_families, preset_names, read_document
from profiles.schema import FAMILY_CONSTANTS, ClusterSpec, Efficiency

LEGACY_A100 = """\
name: my-a100
gpu: {name: A100-SXM4-80GB, memory_gib: 80, peak_tflops: {bf16: 312}, hbm_bandwidth_gbs: 2039}
gpus_per_node: 8
intra_node: {bandwidth_gbs: 300, latency_us: 8}
inter_node: {bandwidth_gbs: 25, latency_us: 15}
"""


def _write(tmp_path: Path, text: str, name: str = "c.yaml") -> str:
    path = tmp_path / name
    path.write_text(text)
    return str(path)


def test_every_family_states_six_constants_each_with_a_source() -> None:
    families = load_gpu_families()
    names = {f.name for f in families.families}
    assert {"V100", "A100", "H100", "B200", "cpu", GENERIC_FAMILY} <= names
    for family in families.families:
        assert set(family.constants.model_dump()) == set(FAMILY_CONSTANTS)
        assert all(family.sources[c] for c in FAMILY_CONSTANTS)
    assert len(FAMILY_CONSTANTS) == 6


@pytest.mark.parametrize("preset, family", [("dgx-a100-40g", "A100"), ("dgx-a100-80g", "A100"), ("dgx-h100", "H100"),
                                            ("dgx-h200", "H100"), ("dgx-b200", "B200"), ("gb200-nvl72", "B200"),
                                            ("v100-32g-4gpu", "V100"), ("cpu-local", "cpu")])
def test_presets_get_their_familys_constants(preset: str, family: str) -> None:
    """The family's priced constants: its fit's where the fit is applied, else the a-priori ones."""
    cluster = load_cluster(preset)
    fam = load_gpu_families().family_of(cluster.gpu.name)
    assert fam.name == family
    priced = fam.fit.values if fam.fit is not None and fam.fit.applied else fam.constants
    for name in FAMILY_CONSTANTS:
        assert getattr(cluster.efficiency, name) == getattr(priced, name)
    assert cluster.efficiency.attention_max == fam.attention_max


def _with_fit(family: GpuFamily, applied: bool) -> GpuFamily:
    values = FamilyConstants(gemm_max=0.61, gemm_half_dim=200.0, hbm=0.9, intra_node_collective=0.7,
                             inter_node_collective=0.6, action_overhead_s=0.002)
    fit = FamilyFit(values=values, applied=applied, applied_reason="test", rows=10, sources=["a", "b"],
                    heldout_mape_pct=5.0, fitted_mape_pct=4.0, apriori_mape_pct=9.0, command="test")
    return family.model_copy(update={"fit": fit})


def test_a_fit_prices_the_familys_clusters_only_where_applied() -> None:
    a100 = load_gpu_families().family_of("A100")
    plain = ClusterSpec.model_validate(yaml_cluster())
    kept = with_family_constants(plain, _with_fit(a100, applied=False))
    assert kept.efficiency.gemm_max == a100.constants.gemm_max
    fitted = with_family_constants(plain, _with_fit(a100, applied=True))
    assert (fitted.efficiency.gemm_max, fitted.efficiency.action_overhead_s) == (0.61, 0.002)
    assert _with_fit(a100, applied=True).apriori_constants() == a100.constants.model_dump()


def test_the_families_file_is_what_render_families_writes() -> None:
    """``ppplan validate --update`` rewrites the file from the schema: what it writes reads back
    the same, and the shipped file is in that form (header and layout)."""
    families = load_gpu_families()
    assert render_families(families) == GPU_FAMILIES_YAML.read_text()


def test_a_cluster_file_of_your_own_gets_the_family_unless_it_sets_its_own(tmp_path: Path) -> None:
    """A file without the NIC or efficiency keys (written before they existed) loads; it gets the
    A100 family's constants and one NIC per GPU at its per-GPU network rate."""
    plain = load_cluster(_write(tmp_path, LEGACY_A100))
    a100 = load_gpu_families().family_of("A100-SXM4-80GB")
    assert plain.efficiency.gemm_max == a100.priced_constants().gemm_max
    assert plain.node_egress_gbs == 8 * 25 and plain.nics_per_node is None
    own = load_cluster(_write(tmp_path, LEGACY_A100 + "efficiency: {gemm_max: 0.61, step_overhead_s: 0.01}\n", "own.yaml"))
    assert own.efficiency.gemm_max == 0.61 and own.efficiency.step_overhead_s == 0.01
    assert own.efficiency.hbm == a100.priced_constants().hbm  # the rest from the family


def test_old_efficiency_keys_still_load(tmp_path: Path) -> None:
    """A calibrated file written before the families (every old Efficiency key, attention_max and
    step_overhead_s included) keeps all of its values."""
    old = LEGACY_A100 + ("efficiency: {gemm_max: 0.7, gemm_half_dim: 120, attention_max: 0.55, hbm: 0.85, "
                         "intra_node_collective: 0.75, inter_node_collective: 0.7, step_overhead_s: 0.02}\n")
    cluster = load_cluster(_write(tmp_path, old))
    assert cluster.efficiency.attention_max == 0.55 and cluster.efficiency.gemm_half_dim == 120
    assert cluster.efficiency.action_overhead_s == 0.0  # from the A100 family


def test_an_unknown_gpu_gets_the_generic_family(tmp_path: Path) -> None:
    cluster = load_cluster(_write(tmp_path, LEGACY_A100.replace("A100-SXM4-80GB", "MI300X")))
    generic = load_gpu_families().family_of("MI300X")
    assert generic.name == GENERIC_FAMILY
    assert cluster.efficiency == generic.efficiency()


def test_family_constants_apply_to_the_unset_fields_only() -> None:
    family = load_gpu_families().family_of("H100")
    built = ClusterSpec.model_validate({**ClusterSpec.model_validate(yaml_cluster()).model_dump(exclude={"efficiency"}),
                                        "efficiency": {"hbm": 0.5}})
    merged = with_family_constants(built, family)
    assert merged.efficiency.hbm == 0.5 and merged.efficiency.gemm_max == family.priced_constants().gemm_max
    assert with_family_constants(merged, family) == merged  # applying twice changes nothing
    assert Efficiency().gemm_max == load_gpu_families().family_of("?").priced_constants().gemm_max  # code default = generic


def yaml_cluster() -> dict:
    import yaml

    return yaml.safe_load(LEGACY_A100)


def test_nic_keys_come_together(tmp_path: Path) -> None:
    with pytest.raises(PlanError, match="nics_per_node and nic_bandwidth_gbit_s"):
        load_cluster(_write(tmp_path, LEGACY_A100 + "nics_per_node: 4\n"))
    four = load_cluster(_write(tmp_path, LEGACY_A100 + "nics_per_node: 4\nnic_bandwidth_gbit_s: 200\n", "four.yaml"))
    assert four.node_egress_gbs == 100


@pytest.mark.parametrize("preset, nics, gbit", [("dgx-a100-40g", 8, 200), ("dgx-a100-80g", 8, 200), ("dgx-h100", 8, 400),
                                                ("dgx-h200", 8, 400), ("dgx-b200", 8, 400)])
def test_gpu_presets_state_their_nics(preset: str, nics: int, gbit: float) -> None:
    cluster = load_cluster(preset)
    assert (cluster.nics_per_node, cluster.nic_bandwidth_gbit_s) == (nics, gbit)
    assert cluster.node_egress_gbs == pytest.approx(cluster.gpus_per_node * cluster.inter_node.bandwidth_gbs)


@pytest.mark.parametrize("edit, message", [
    (("    action_overhead_s: a priori 0, as A100", "    not_a_constant: a priori 0, as A100"), "no source for action_overhead_s"),
    (("    action_overhead_s: a priori 0, as A100", "    action_overhead_s: a priori 0, as A100\n    speed: x"), "unknown constant"),
    (("  constants: {gemm_max: 0.8,", "  constants: {gemm_max: 1.2,"), "less than or equal to 1"),
    (("attention_kernel_ratios: {triton: 0.77}", "attention_kernel_ratios: {triton: 1.3}"), "in \\(0, 1\\]"),
    (("attention_kernel_ratios: {triton: 0.77}", "attention_kernel_ratios: {triton: 0.77, fa2: 0.5}"), "needs its source"),
    (("attention_kernel_ratios: {triton: 0.77}", "attention_kernel_ratios: {fa3: 0.77}"), "fa3"),
    (("gpu_name_prefixes: [A100]", "gpu_name_prefixes: [A100]\n  colour: red"), "unknown key"),
    (("- name: generic", "- name: fallback"), "generic"),
])
def test_a_bad_family_file_is_refused(tmp_path: Path, edit: tuple[str, str], message: str) -> None:
    text = GPU_FAMILIES_YAML.read_text()
    assert edit[0] in text
    path = tmp_path / "families.yaml"
    path.write_text(text.replace(edit[0], edit[1], 1))
    with pytest.raises(PlanError, match=message):
        load_gpu_families(path)


def test_every_cluster_preset_loads() -> None:
    for name in preset_names("clusters"):
        assert load_cluster(name).efficiency.gemm_max > 0
    assert read_document(GPU_FAMILIES_YAML)["schema_version"] == 1


@pytest.mark.parametrize("extra, message", [
    ("nics_per_node: 4\nnic_bandwidth_gbit_s: .inf\n", "finite"),
    ("nics_per_node: 0\nnic_bandwidth_gbit_s: 200\n", "greater than 0"),
    ("efficiency: {action_overhead_s: .inf}\n", "finite"),
    ("efficiency: {gemm_max: 1.5}\n", "less than or equal to 1"),
    ("efficiency: {gemm_speed: 0.5}\n", "unknown key"),
])
def test_bad_network_or_efficiency_values_are_refused(tmp_path: Path, extra: str, message: str) -> None:
    with pytest.raises(PlanError, match=message):
        load_cluster(_write(tmp_path, LEGACY_A100 + extra))


@pytest.mark.parametrize(("cluster", "nvidia_smi_mib"), [("dgx-b200", 183_359), ("gb200-nvl72", 189_471)])
def test_a_blackwell_preset_offers_the_memory_nvidia_smi_reports(cluster: str, nvidia_smi_mib: int) -> None:
    """The fit check's capacity is what the GPU offers (nvidia-smi's total, in GiB), not the datasheet's GB read as
    10^9 bytes: 186 GB read that way is 173 GiB, 6.5 % short of the 185.0 GiB a GB200 reports."""
    assert load_cluster(cluster).gpu.memory_gib == pytest.approx(nvidia_smi_mib / 1024, abs=0.1)


@pytest.mark.parametrize("ratio", [0.0, -1.0, 1.5])
def test_a_cluster_attention_kernel_ratio_outside_0_1_is_refused(ratio: float) -> None:
    """A ratio of 0 divided the flash kernel's time by zero; a negative one took attention time off the step."""
    with pytest.raises(ValidationError, match="attention_kernel_ratios.fa2"):
        Efficiency(attention_kernel_ratios={"fa2": ratio})
