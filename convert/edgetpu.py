"""The Coral Edge TPU tooling in one import: the pre-compile lint (:mod:`convert.lint`), the
``edgetpu_compiler`` wrapper (:mod:`convert.compiler`) and its log parser
(:mod:`convert.compiler_log`)."""

from __future__ import annotations

from edge_runtime.tflite import EDGETPU_CUSTOM_OP

from .compiler import INSTALL_HINT, CompileResult, compile_edgetpu
from .compiler_log import parse_compiler_log
from .lint import (
    FIX_BATCH,
    FIX_INT8,
    FIX_STATIC,
    SUPPORTED_OPS,
    Finding,
    LintReport,
    OpPlacement,
    format_report,
    lint_model,
    lint_summary,
    main_lint,
)

__all__ = ["EDGETPU_CUSTOM_OP", "FIX_BATCH", "FIX_INT8", "FIX_STATIC", "INSTALL_HINT",
           "SUPPORTED_OPS", "CompileResult", "Finding", "LintReport", "OpPlacement",
           "compile_edgetpu", "format_report", "lint_model", "lint_summary", "main_lint",
           "parse_compiler_log"]
