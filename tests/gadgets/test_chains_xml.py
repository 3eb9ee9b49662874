"""Every config_xml/*.xml is a valid Gadgetron 4 stream configuration for a qmapinr chain.

Checked (Gadgetron 4 format, as in Gadgetron's own core/config/external_example.xml): root ``<configuration>``
with ``<version>2</version>``; ``<readers>`` holding ``AcquisitionReader`` from ``gadgetron_core_readers``;
``<writers>`` holding ``ImageWriter`` from ``gadgetron_core_writers``; a ``<stream>`` with at least one
``<external>`` whose ``<execute name="MODULE" target="FUNCTION" type="python"/>`` imports and is callable, and
whose ``<configuration>`` holds ``<property name value/>`` pairs that are all fields of the chain's config
dataclass (``qmapinr.gadgets.chains.CHAIN_CONFIGS``) and parse with ``from_properties``. The file name must
also name a chain, because the standalone server maps ``summit.xml`` to the chain ``summit``.
"""

from __future__ import annotations

import importlib
import inspect
import xml.etree.ElementTree as ET
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import pytest

from qmapinr.recon.config import ConfigError, field_names, from_properties

REPO = Path(__file__).resolve().parents[2]
XML_FILES = sorted((REPO / "config_xml").glob("*.xml"))


def _component(parent: ET.Element, kind: str, dll: str, classname: str) -> bool:
    return any((e.findtext("dll") or "").strip() == dll
               and (e.findtext("classname") or "").strip() == classname for e in parent.findall(kind))


def _chain_key(chains: Mapping, target: str, func) -> str | None:
    for key, value in chains.items():
        if key == target or value is func:
            return key
    return None


def validate_stream_config(text: str, chains: Mapping | None, chain_configs: Mapping | None,
                           file_stem: str | None = None) -> list[str]:
    """Problems found in a Gadgetron 4 stream configuration (empty list: valid).

    ``chains``/``chain_configs`` (name -> function / config dataclass) enable the name and property checks.
    """
    try:
        root = ET.fromstring(text)
    except ET.ParseError as exc:
        return [f"not XML: {exc}"]
    problems = []
    if root.tag != "configuration":
        problems.append(f"root is <{root.tag}>, expected <configuration>")
    if (root.findtext("version") or "").strip() != "2":
        problems.append("missing <version>2</version> (Gadgetron 4 stream configuration)")
    readers, writers, stream = root.find("readers"), root.find("writers"), root.find("stream")
    if readers is None or not _component(readers, "reader", "gadgetron_core_readers", "AcquisitionReader"):
        problems.append("<readers> lacks AcquisitionReader from gadgetron_core_readers")
    if writers is None or not _component(writers, "writer", "gadgetron_core_writers", "ImageWriter"):
        problems.append("<writers> lacks ImageWriter from gadgetron_core_writers")
    externals = [] if stream is None else stream.findall("external")
    if not externals:
        problems.append("<stream> has no <external> block")
    for ext in externals:
        execute = ext.find("execute")
        if execute is None:
            problems.append("<external> without <execute>")
            continue
        module, target, kind = execute.get("name"), execute.get("target"), execute.get("type")
        if kind != "python":
            problems.append(f"<execute type={kind!r}>, expected 'python'")
        try:
            func = getattr(importlib.import_module(module or ""), target or "")
        except (ImportError, ValueError, AttributeError) as exc:
            problems.append(f"<execute name={module!r} target={target!r}> does not resolve: {exc}")
            continue
        if not (callable(func) and (not inspect.isclass(func) or hasattr(func, "handle"))):
            problems.append(f"{module}.{target} is neither a function nor a class with handle()")
        config = ext.find("configuration")
        if config is None:
            problems.append(f"<external> for {target} has no <configuration>")
            continue
        props = {}
        for prop in config.findall("property"):
            name, value = prop.get("name"), prop.get("value")
            if not name or value is None:
                problems.append(f"<property> needs name and value attributes: {ET.tostring(prop).decode()}")
            elif name in props:
                problems.append(f"property {name!r} given twice")
            else:
                props[name] = value
        if chains is None:
            continue
        key = _chain_key(chains, target, func)
        if key is None:
            problems.append(f"{module}.{target} is not a chain in CHAINS ({sorted(chains)})")
            continue
        if file_stem is not None and file_stem not in chains:
            problems.append(f"file name {file_stem}.xml does not name a chain ({sorted(chains)})")
        if chain_configs is None:
            continue
        key = props.pop("method", key)  # the method switch: the other properties belong to the named method
        if key not in chain_configs:
            problems.append(f"chain {key!r} has no entry in CHAIN_CONFIGS")
            continue
        known = field_names(chain_configs[key])
        unknown = sorted(set(props) - known)
        if unknown:
            problems.append(f"unknown properties for chain {key!r}: {unknown}")
        else:
            try:
                from_properties(chain_configs[key], props)
            except ConfigError as exc:
                problems.append(f"properties do not parse: {exc}")
    return problems


def _registries():
    try:
        chains_module = importlib.import_module("qmapinr.gadgets.chains")
    except ImportError as exc:
        pytest.skip(f"qmapinr.gadgets.chains not importable yet: {exc}")
    chains = getattr(chains_module, "CHAINS", None)
    configs = getattr(chains_module, "CHAIN_CONFIGS", None)
    if chains is None or configs is None:
        pytest.skip("qmapinr.gadgets.chains has no CHAINS / CHAIN_CONFIGS yet")
    return chains, configs


@pytest.mark.parametrize("path", XML_FILES or [None], ids=[p.name for p in XML_FILES] or ["none"])
def test_config_xml_is_valid_gadgetron4_stream(path):
    if path is None:
        pytest.skip("no config_xml/*.xml yet")
    chains, configs = _registries()
    problems = validate_stream_config(path.read_text(encoding="utf-8"), chains, configs, file_stem=path.stem)
    assert problems == [], f"{path.name}: " + "; ".join(problems)


def test_every_chain_has_a_config_xml():
    chains, _ = _registries()
    missing = sorted(set(chains) - {p.stem for p in XML_FILES})
    assert not missing, f"chains without config_xml/<name>.xml: {missing}"


# -- the validator itself catches errors ---------------------------------------------------------------------
@dataclass(frozen=True)
class _SampleConfig:
    epochs: int = 1
    lr: float = 0.1


def sample_chain(connection) -> None:
    """Stand-in chain for the validator's own tests."""


SAMPLE_CHAINS = {"sample": sample_chain}
SAMPLE_CONFIGS = {"sample": _SampleConfig}
SAMPLE = f"""<?xml version="1.0" encoding="UTF-8"?>
<configuration>
    <version>2</version>
    <readers><reader><dll>gadgetron_core_readers</dll><classname>AcquisitionReader</classname></reader></readers>
    <writers><writer><dll>gadgetron_core_writers</dll><classname>ImageWriter</classname></writer></writers>
    <stream>
        <external>
            <execute name="{__name__}" target="sample_chain" type="python"/>
            <configuration>
                <property name="epochs" value="3"/>
                <property name="lr" value="0.01"/>
            </configuration>
        </external>
    </stream>
</configuration>
"""


def test_validator_accepts_sample():
    assert validate_stream_config(SAMPLE, SAMPLE_CHAINS, SAMPLE_CONFIGS, file_stem="sample") == []


@pytest.mark.parametrize(
    "old, new, expected",
    [
        ('name="lr"', 'name="learning_rate"', "unknown properties for chain 'sample': ['learning_rate']"),
        ('value="3"', 'value="three"', "properties do not parse"),
        ("<version>2</version>", "", "missing <version>2</version>"),
        ("gadgetron_core_readers", "gadgetron_mricore", "lacks AcquisitionReader"),
        ("<classname>ImageWriter", "<classname>AcquisitionWriter", "lacks ImageWriter"),
        ('target="sample_chain"', 'target="no_such_function"', "does not resolve"),
        ('target="sample_chain"', 'target="SAMPLE"', "neither a function nor a class"),
        ('type="python"', 'type="matlab"', "expected 'python'"),
        ('<property name="lr" value="0.01"/>', '<property name="epochs" value="4"/>', "given twice"),
        ("</stream>", "</stream", "not XML"),
    ],
)
def test_validator_catches_errors(old, new, expected):
    broken = SAMPLE.replace(old, new, 1)
    assert broken != SAMPLE
    problems = validate_stream_config(broken, SAMPLE_CHAINS, SAMPLE_CONFIGS, file_stem="sample")
    assert any(expected in p for p in problems), problems


def test_validator_catches_file_name_without_chain():
    problems = validate_stream_config(SAMPLE, SAMPLE_CHAINS, SAMPLE_CONFIGS, file_stem="renamed")
    assert any("does not name a chain" in p for p in problems), problems
