"""junit.xml with one testcase per gate, the measured value in the message (for CI systems)."""

from __future__ import annotations

from pathlib import Path
from typing import Any
from xml.etree import ElementTree as ET

from compress._utils.io import atomic_write_bytes


def junit_xml(name: str, gates: list[dict[str, Any]]) -> bytes:
    """Render gate results as a JUnit XML test suite."""
    failures = sum(not g["passed"] for g in gates)
    suite = ET.Element("testsuite", name=f"compress.gates.{name}", tests=str(len(gates)), failures=str(failures), errors="0")
    for g in gates:
        case = ET.SubElement(suite, "testcase", classname=f"compress.gates.{name}", name=g["name"])
        if g["passed"]:
            ET.SubElement(case, "system-out").text = g["message"]
        else:
            fail = ET.SubElement(case, "failure", message=g["message"], type="GateFailed")
            fail.text = f"measured={g['measured']!r} budget={g['budget']!r}"
    suites = ET.Element("testsuites", tests=str(len(gates)), failures=str(failures))
    suites.append(suite)
    return ET.tostring(suites, encoding="utf-8", xml_declaration=True)


def write_junit(path: Path, name: str, gates: list[dict[str, Any]]) -> None:
    """Write ``junit.xml`` atomically."""
    atomic_write_bytes(path, junit_xml(name, gates))
