"""Gates and reports: gate evaluation (with the accuracy drop's confidence interval), junit.xml, report.md,
report.html, metrics.json."""

from compress.report.confidence import PairedCounts as PairedCounts
from compress.report.gates import evaluate_gates as evaluate_gates
from compress.report.junit import junit_xml as junit_xml
from compress.report.markdown import build_metrics as build_metrics, render_markdown as render_markdown, write_reports as write_reports
from compress.report.html import render_html as render_html
