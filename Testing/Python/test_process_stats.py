"""The segmenting commands' allocator setting: freed image-sized blocks go back to the system (glibc)."""
import subprocess
import sys

import pytest

#: After one 30 MiB block is freed, glibc's default serves blocks of up to 30 MiB from its heap; with small
#: blocks between them the heap cannot shrink from its top, so freeing them returns nothing (measured: 0 MB).
FREED_MB = """
import sys
import numpy as np
from DareFuseSlicerLib.pipeline.process_stats import resident_mb, unmap_large_blocks
if not unmap_large_blocks():
    sys.exit(3)
big = np.ones(30 << 20, np.uint8)
del big
blocks, pins = [], []
for _ in range(10):
    blocks.append(np.ones(20 << 20, np.uint8))
    pins.append(bytearray(1 << 16))
before = resident_mb()
del blocks
print(before - resident_mb())
"""


def test_freed_large_blocks_are_returned_to_the_system():
    done = subprocess.run([sys.executable, "-c", FREED_MB], capture_output=True, text=True, timeout=60)
    if done.returncode == 3:
        pytest.skip("no glibc mallopt on this platform")
    assert done.returncode == 0, done.stderr
    assert float(done.stdout) > 150  # of the 210 MB freed


def test_cpu_description_names_the_model_and_hardware_bf16(tmp_path):
    from DareFuseSlicerLib.pipeline.process_stats import cpu_description
    cpu = "processor\t: {n}\nmodel name\t: Intel(R) Xeon(R)  Platinum 8480+\nflags\t\t: fpu avx512f {flags}\n"
    with_amx = tmp_path / "amx"
    with_amx.write_text(cpu.format(n=0, flags="avx512_bf16 amx_bf16 amx_tile") + "\n" + cpu.format(n=1, flags=""))
    without = tmp_path / "plain"
    without.write_text(cpu.format(n=0, flags="avx512_vnni"))
    assert cpu_description(str(with_amx)) == "Intel(R) Xeon(R) Platinum 8480+, bf16 in hardware: amx_bf16 and avx512_bf16"
    assert cpu_description(str(without)) == "Intel(R) Xeon(R) Platinum 8480+, bf16 in hardware: no"
    assert "bf16" not in cpu_description(str(tmp_path / "missing"))
