"""virtio-net and virtio-console layouts and numbers: offsets as the spec tables give them
(reference section 10 and 11), fast codecs equal to the construct declarations, the header
size rule, and the net feature dependency table."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from virtio_sim import layouts as L
from virtio_sim.layouts import field_offsets
from virtio_sim.netproto import format_mac, net_hdr_len, nth_mac, parse_mac
from virtio_sim.spec import (
    CONSOLE_E,
    CONSOLE_F,
    NET_CTRL,
    NET_F,
    NET_FEATURE_DEPS,
    F,
    SpecDataError,
    _load_dependencies,
    bit,
    unmet_dependencies,
)

ORDERS = ("little", "big")


def test_net_hdr_offsets_and_sizes() -> None:
    assert field_offsets(L.virtio_net_hdr()) == {
        "flags": 0,
        "gso_type": 1,
        "hdr_len": 2,
        "gso_size": 4,
        "csum_start": 6,
        "csum_offset": 8,
        "num_buffers": 10,
    }
    assert L.NET_HDR_LEGACY_SIZE == 10 and L.NET_HDR_SIZE == 12
    assert L.NET_NUM_BUFFERS_OFFSET == 10


def test_net_config_offsets() -> None:
    assert L.NET_CONFIG_OFFSETS == {
        "mac": 0,
        "status": 6,
        "max_virtqueue_pairs": 8,
        "mtu": 10,
        "speed": 12,
        "duplex": 16,
        "rss_max_key_size": 17,
        "rss_max_indirection_table_length": 18,
        "supported_hash_types": 20,
        "supported_tunnel_types": 24,
    }
    assert L.VirtioNetConfig.sizeof() == 28
    assert L.NET_CTRL_HDR_SIZE == 2 and L.NET_CTRL_ACK_SIZE == 1


def test_console_layouts() -> None:
    assert L.CONSOLE_CONFIG_OFFSETS == {"cols": 0, "rows": 2, "max_nr_ports": 4, "emerg_wr": 8}
    assert L.VirtioConsoleConfig.sizeof() == 12
    assert field_offsets(L.VirtioConsoleControl) == {"id": 0, "event": 4, "value": 6}
    assert L.CONSOLE_CONTROL_SIZE == 8
    assert L.virtio_console_resize().sizeof() == 4


@settings(deadline=None, max_examples=60)
@given(
    order=st.sampled_from(ORDERS),
    nb=st.booleans(),
    values=st.tuples(*(st.integers(0, 255),) * 2, *(st.integers(0, 0xFFFF),) * 5),
)
def test_net_hdr_codec_matches_construct(order: str, nb: bool, values: tuple[int, ...]) -> None:
    decl = L.virtio_net_hdr(order, nb)  # type: ignore[arg-type]
    names = [sc.name for sc in decl.subcons]
    vals = values[: len(names)]
    packed = L.net_hdr_codec(order, nb).pack(*vals)  # type: ignore[arg-type]
    assert packed == decl.build(dict(zip(names, vals, strict=True)))


@settings(deadline=None, max_examples=60)
@given(
    order=st.sampled_from(ORDERS),
    pid=st.integers(0, 0xFFFFFFFF),
    ev=st.integers(0, 0xFFFF),
    v=st.integers(0, 0xFFFF),
)
def test_console_control_codec_matches_construct(order: str, pid: int, ev: int, v: int) -> None:
    packed = L.console_control_codec(order).pack(pid, ev, v)  # type: ignore[arg-type]
    decl = L.virtio_console_control(order)  # type: ignore[arg-type]
    assert packed == decl.build({"id": pid, "event": ev, "value": v})
    assert L.console_resize_codec(order).pack(ev, v) == L.virtio_console_resize(order).build(  # type: ignore[arg-type]
        {"cols": ev, "rows": v}
    )


def test_big_endian_header_puts_num_buffers_native() -> None:
    raw = L.net_hdr_codec("big", True).pack(0, 0, 0, 0, 0, 0, 0x0102)
    assert raw[10:12] == b"\x01\x02"


@pytest.mark.parametrize(
    "features, size",
    [
        (0, 10),
        (bit(NET_F.MRG_RXBUF), 12),
        (bit(F.VERSION_1), 12),
        (bit(F.VERSION_1) | bit(NET_F.MRG_RXBUF), 12),
        (bit(NET_F.CSUM) | bit(NET_F.GUEST_CSUM) | bit(NET_F.CTRL_VQ), 10),
    ],
)
def test_header_size_rule(features: int, size: int) -> None:
    assert net_hdr_len(features) == size


def test_feature_and_protocol_numbers() -> None:
    assert (NET_F.CSUM, NET_F.GUEST_CSUM, NET_F.MAC, NET_F.MRG_RXBUF, NET_F.STATUS) == (0, 1, 5, 15, 16)
    assert (NET_F.CTRL_VQ, NET_F.CTRL_RX, NET_F.MQ, NET_F.CTRL_MAC_ADDR) == (17, 18, 22, 23)
    assert (CONSOLE_F.SIZE, CONSOLE_F.MULTIPORT, CONSOLE_F.EMERG_WRITE) == (0, 1, 2)
    assert (NET_CTRL.RX, NET_CTRL.MAC, NET_CTRL.MQ) == (0, 1, 4)
    assert (CONSOLE_E.DEVICE_READY, CONSOLE_E.PORT_ADD, CONSOLE_E.PORT_READY, CONSOLE_E.PORT_OPEN) == (
        0,
        1,
        3,
        6,
    )


def test_dependency_table() -> None:
    assert unmet_dependencies(bit(NET_F.CTRL_VQ) | bit(NET_F.MQ) | bit(NET_F.CTRL_RX), NET_FEATURE_DEPS) == []
    broken = unmet_dependencies(bit(NET_F.MQ), NET_FEATURE_DEPS)
    assert [d.feature for d in broken] == [NET_F.MQ]
    ecn = bit(NET_F.GUEST_ECN) | bit(NET_F.GUEST_CSUM)
    assert [d.feature for d in unmet_dependencies(ecn, NET_FEATURE_DEPS)] == [NET_F.GUEST_ECN]
    assert unmet_dependencies(ecn | bit(NET_F.GUEST_TSO6), NET_FEATURE_DEPS) == []  # either TSO will do


@pytest.mark.parametrize(
    "data",
    [{"VIRTIO_NET_F_MQ": []}, {"VIRTIO_NET_F_MQ": ["VIRTIO_NET_F_NOPE"]}, {"VIRTIO_NET_F_MQ": {"any": 3}}],
)
def test_malformed_dependency_data_is_a_spec_error(data: dict[str, object]) -> None:
    with pytest.raises(SpecDataError):
        _load_dependencies(data, "test.toml")


def test_mac_helpers() -> None:
    assert format_mac(parse_mac("52:54:00:12:34:56")) == "52:54:00:12:34:56"
    assert nth_mac("52:54:00:12:34:56", 1) == "52:54:00:12:34:57"
    for bad in ("52:54:00:12:34", "52:54:00:12:34:zz", "525400123456"):
        with pytest.raises(ValueError, match="not a MAC address"):
            parse_mac(bad)
