"""The image's ``direct`` key on a gate (docs/direct-channels.md): parsed, and handed to the kernel factory."""
from __future__ import annotations

from capabilities.image import parse_image
from capabilities.kinds import IMAGE_KINDS

TEXT = """
name: d
objects:
  fast: {type: gate, direct: true}
  slow: {type: gate, direct: false}
  plain: {type: gate}
tasks:
  s:
    program: hello.ping_server
    caps: {fast: "fast:svr", slow: "slow:svr", plain: "plain:svr"}
"""


def test_direct_is_a_gate_flag_off_by_default():
    image = parse_image(TEXT, "d.yaml", lambda _p: True)
    assert [image.object(n).direct for n in ("fast", "slow", "plain")] == [True, False, False]


def test_moe_passes_it_to_the_kernel_factory():
    assert IMAGE_KINDS["gate"].factory_args == ("direct",)


def test_the_wvds_gates_to_the_services_are_direct():
    from systemlib import ROOT
    image = parse_image((ROOT / "images" / "wvds.yaml").read_text(), "wvds.yaml", lambda _p: True)
    assert {o.name for o in image.objects if o.direct} == {"crypto_gw", "est_gw"}
