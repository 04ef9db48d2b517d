"""The core digest (webhook/digest.py): the algorithms against their reference libraries, the
recorded form, older metadata, and the agent's setting."""

from __future__ import annotations

import hashlib
import os
import threading

import pytest
import xxhash
from click.testing import CliRunner

from webhook import digest


def test_each_algorithm_is_its_reference_and_is_recorded_with_its_name():
    data = os.urandom(100_000) + bytes(50_000)
    for name, ref in (("xxh128", xxhash.xxh3_128(data).hexdigest()), ("sha256", hashlib.sha256(data).hexdigest())):
        h = digest.new(name)
        h.update(data[:70_000])
        h.update(memoryview(data)[70_000:])  # in pieces, as the agent reads a core back
        value = digest.format_digest(name, h.hexdigest())
        assert value == f"{name}:{ref}" and len(ref) == digest.HEX_LENGTH[name]
        assert digest.parse(value) == (name, ref) and digest.hex_part(value) == ref
        assert len(value) <= digest.MAX_LENGTH
    assert digest.DEFAULT == "xxh128"


@pytest.mark.parametrize("value", [None, "", 42, "xxh128", "xxh128:", "xxh128:" + "a" * 31, "xxh128:" + "A" * 32,
                                   "sha256:" + "a" * 32, "md5:" + "a" * 32, ":" + "a" * 32, "a" * 64])
def test_anything_but_a_well_formed_known_digest_is_none(value):
    assert digest.parse(value) is None and digest.hex_part(value if isinstance(value, str) else "") == ""
    assert digest.of_metadata({"digest": value, "size": 1}) == ""


def test_metadata_before_the_digest_key_reads_as_a_sha256_digest():
    sha = hashlib.sha256(b"core").hexdigest()
    assert digest.of_metadata({"sha256": sha}) == "sha256:" + sha
    assert digest.of_metadata({"sha256": None}) == "" and digest.of_metadata({"sha256": "xyz"}) == ""
    # the new key wins over a stale old one; neither: nothing
    assert digest.of_metadata({"digest": "xxh128:" + "0" * 32, "sha256": sha}) == "xxh128:" + "0" * 32
    assert digest.of_metadata({}) == "" and digest.of_metadata("not a dict") == ""  # type: ignore[arg-type]


def test_an_unknown_algorithm_is_a_clear_error():
    for bad in ("md5", "XXH128", "", "xxh64"):
        with pytest.raises(ValueError, match="digest must be one of xxh128, sha256"):
            digest.new(bad)
    with pytest.raises(ValueError):
        digest.hasher_for("sha256:short")
    assert digest.hasher_for("sha256:" + "0" * 64).hexdigest() == hashlib.sha256().hexdigest()


def test_the_agent_setting_is_an_option_with_its_variable_and_is_checked_at_start(tmp_path):
    from webhook.agent.commands import agent, run_agent
    from webhook.agent.settings import AgentSettings

    assert AgentSettings().digest == "xxh128"
    out = CliRunner().invoke(agent, ["run", "--help"], terminal_width=200).output
    assert "--digest [xxh128|sha256]" in out and "xxh128sum" in out
    bad = CliRunner().invoke(agent, ["run", "--digest", "md5"])
    assert bad.exit_code == 2 and "md5" in bad.output  # a usage error before anything starts
    option = next(p for p in agent.commands["run"].params if p.name == "digest")
    assert option.envvar == "COREDUMP_AGENT_DIGEST" and option.default == "xxh128"
    # refused before anything is installed: the kernel's settings are never touched
    with pytest.raises(ValueError, match="digest must be one of"):
        run_agent(AgentSettings(host_dir=str(tmp_path), digest="md5", sysctl_root=str(tmp_path / "sys")),
                  threading.Event())
    assert os.listdir(tmp_path) == []
