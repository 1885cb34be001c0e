"""`tesai agent doctor`'s container checks, from what an engine and a host report (recorded
answers: no engine needed), and the node image's name and labels."""

from __future__ import annotations

import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from tesai.agent import doctor, node_image

# `docker version` of Debian bookworm's docker.io, as the Engine API answers /version.
DOCKER_20_10 = {
    "Platform": {"Name": ""},
    "Components": [
        {"Name": "Engine", "Version": "20.10.24+dfsg1"},
        {"Name": "containerd", "Version": "1.6.20~ds1"},
        {"Name": "runc", "Version": "1.1.5+ds1"},
    ],
    "Version": "20.10.24+dfsg1",
    "ApiVersion": "1.41",
    "MinAPIVersion": "1.12",
    "Os": "linux",
}
PODMAN_4 = {
    "Components": [{"Name": "Podman Engine", "Version": "4.3.1"}],
    "Version": "4.3.1",
    "ApiVersion": "1.41",
}
# /proc/self/mounts lines of the two cgroup layouts (this CI machine has the hybrid one).
HYBRID_V1 = """\
tmpfs /sys/fs/cgroup tmpfs rw,relatime,mode=755 0 0
cgroup /sys/fs/cgroup/cpu cgroup rw,relatime,cpu 0 0
cgroup /sys/fs/cgroup/memory cgroup rw,relatime,memory 0 0
cgroup /sys/fs/cgroup/pids cgroup rw,relatime,pids 0 0
cgroup2 /sys/fs/cgroup/unified cgroup2 rw,relatime 0 0
"""
UNIFIED_V2 = "cgroup2 /sys/fs/cgroup cgroup2 rw,nosuid,nodev,noexec,relatime 0 0\n"
IMAGE = node_image.IMAGE
DIGEST = "ab" * 32
CURRENT = {
    node_image.RAY_VERSION_LABEL: node_image.RAY_VERSION,
    node_image.RAY_SITE_LABEL: DIGEST,
}


def test_debian_docker_engine_is_recognised_with_its_api_version() -> None:
    check = doctor.engine_check(DOCKER_20_10)
    assert check.outcome == "OK"
    assert check.detail == "Docker Engine 20.10.24+dfsg1 (API 1.41)"


def test_podman_is_named_as_podman() -> None:
    assert doctor.engine_check(PODMAN_4).detail.startswith("Podman Engine 4.3.1")


def test_an_engine_too_old_for_device_requests_fails() -> None:
    check = doctor.engine_check({**DOCKER_20_10, "Version": "19.03.15", "ApiVersion": "1.39"})
    assert check.outcome == "FAIL"
    assert "1.41 or newer" in check.detail
    assert check.fix


def test_node_image_of_the_platforms_ray_version_is_ok() -> None:
    check = doctor.image_check(IMAGE, CURRENT, ray_site_sha256=DIGEST)
    assert (check.outcome, check.detail) == ("OK", f"{IMAGE} (Ray {node_image.RAY_VERSION})")


def test_missing_node_image_says_how_to_build_it() -> None:
    check = doctor.image_check(IMAGE, None)
    assert check.outcome == "WARN"
    assert check.fix is not None
    assert "make node-image" in check.fix


def test_node_image_with_another_ray_is_an_image_ray_mismatch() -> None:
    check = doctor.image_check(IMAGE, {**CURRENT, node_image.RAY_VERSION_LABEL: "2.59.0"})
    assert check.outcome == "FAIL"
    assert "Ray 2.59.0" in check.detail
    assert "image_ray_mismatch" in check.detail


def test_node_image_without_a_version_label_is_not_trusted() -> None:
    assert doctor.image_check(IMAGE, {"maintainer": "someone"}).outcome == "WARN"


def test_node_image_built_with_an_older_lockdown_asks_for_a_rebuild() -> None:
    check = doctor.image_check(IMAGE, CURRENT, ray_site_sha256="cd" * 32)
    assert check.outcome == "WARN"
    assert "lock-down" in check.detail


def test_cgroup_v2_with_the_needed_controllers_is_ok() -> None:
    check = doctor.cgroup_check(UNIFIED_V2, "cpuset cpu io memory hugetlb pids rdma\n", None)
    assert check.outcome == "OK"


def test_cgroup_v2_without_pids_cannot_stop_a_fork_bomb() -> None:
    check = doctor.cgroup_check(UNIFIED_V2, "cpuset cpu io memory\n", None)
    assert check.outcome == "FAIL"
    assert "pids" in check.detail


def test_hybrid_cgroup_v1_works_but_warns() -> None:
    check = doctor.cgroup_check(HYBRID_V1, None, None)
    assert check.outcome == "WARN"
    assert check.fix is not None
    assert "systemd.unified_cgroup_hierarchy=1" in check.fix


def test_cgroup_v1_without_memory_fails() -> None:
    no_memory = "\n".join(line for line in HYBRID_V1.splitlines() if "memory" not in line)
    check = doctor.cgroup_check(no_memory, None, None)
    assert check.outcome == "FAIL"
    assert "memory" in check.detail


def test_engine_that_cannot_limit_memory_fails_whatever_the_mounts_say() -> None:
    info = {"MemoryLimit": False, "PidsLimit": True, "CpuCfsQuota": True}
    check = doctor.cgroup_check(UNIFIED_V2, "cpu memory pids", info)
    assert check.outcome == "FAIL"
    assert "MemoryLimit" in check.detail


@pytest.mark.parametrize(
    ("free_gib", "gpu_host", "outcome"),
    [(100, False, "OK"), (10, False, "WARN"), (3, False, "FAIL"), (30, True, "WARN")],
)
def test_image_disk_thresholds(free_gib: int, gpu_host: bool, outcome: str) -> None:
    check = doctor.image_disk_check(Path("/var/lib/docker"), free_gib * 2**30, gpu_host)
    assert check.outcome == outcome
    assert f"{free_gib} GiB free in /var/lib/docker" in check.detail


def test_docker_on_a_gpu_host_needs_the_nvidia_toolkit() -> None:
    check = doctor.nvidia_container_check(
        "Docker Engine", ["runc", "io.containerd.runc.v2"], None, []
    )
    assert check.outcome == "FAIL"
    assert check.fix is not None
    assert "nvidia-ctk runtime configure --runtime=docker" in check.fix


def test_docker_with_the_nvidia_hook_can_hand_out_gpus() -> None:
    hook = "/usr/bin/nvidia-container-runtime-hook"
    check = doctor.nvidia_container_check("Docker Engine", ["runc"], hook, [])
    assert check.outcome == "OK"
    assert hook in check.detail


def test_docker_with_only_cdi_specs_still_fails() -> None:
    specs = [Path("/etc/cdi/nvidia.yaml")]
    check = doctor.nvidia_container_check("Docker Engine", ["runc"], None, specs)
    assert check.outcome == "FAIL"
    assert "/etc/cdi/nvidia.yaml" in check.detail


def test_podman_uses_cdi_specs() -> None:
    specs = [Path("/etc/cdi/nvidia.yaml")]
    assert doctor.nvidia_container_check("Podman Engine", [], None, specs).outcome == "OK"
    check = doctor.nvidia_container_check("Podman Engine", [], None, [])
    assert check.outcome == "FAIL"
    assert check.fix is not None
    assert "nvidia-ctk cdi generate" in check.fix


def test_node_image_name_follows_the_ray_version() -> None:
    assert node_image.image_tag("2.60.0") == "tesai/ray-node:2.60.0"
    assert f"tesai/ray-node:{node_image.RAY_VERSION}" == node_image.IMAGE
    with pytest.raises(ValueError, match="not a Ray version"):
        node_image.image_tag("latest")


def test_node_image_ray_version_is_the_pinned_one() -> None:
    pyproject = Path(__file__).resolve().parents[2] / "pyproject.toml"
    deps = tomllib.loads(pyproject.read_text())["project"]["dependencies"]
    assert f"ray[default]=={node_image.RAY_VERSION}" in deps


def test_image_ray_version_reads_the_label_only() -> None:
    assert node_image.image_ray_version(CURRENT) == node_image.RAY_VERSION
    assert node_image.image_ray_version({}) is None
    assert node_image.image_ray_version(None) is None


def test_doctor_imports_without_the_docker_package() -> None:
    code = (
        "import sys\n"
        "class Block:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name == 'docker' or name.startswith('docker.'):\n"
        "            raise ImportError('blocked: ' + name)\n"
        "sys.meta_path.insert(0, Block())\n"
        "from tesai.agent import doctor\n"
        "print(doctor.check_containers(gpu_host=False)[0].detail)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 0, done.stderr
    assert "docker Python package is missing" in done.stdout
