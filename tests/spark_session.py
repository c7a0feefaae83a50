"""The local Spark session the tests share the settings of.

A JVM takes seconds to start, so each module opens one session; its settings keep it
lean (serial GC, no tiered compilation beyond C1, no code generation: on a few hundred
rows they cost more than they save) and bound to loopback, in UTC, with one shuffle
partition. Skips, with the reason, where Java or pyspark is missing.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest


@contextmanager
def local_session(app_name: str) -> Iterator[Any]:
    if shutil.which("java") is None:
        pytest.skip(
            "no Java runtime on PATH: Spark's local mode needs one "
            "(apt-get install default-jdk-headless)"
        )
    sql = pytest.importorskip(
        "pyspark.sql", reason="pyspark is not installed (pip install '.[spark]')"
    )
    session = (
        sql.SparkSession.builder.master("local[1]")
        .appName(app_name)
        .config("spark.ui.enabled", "false")
        .config("spark.ui.showConsoleProgress", "false")
        .config("spark.driver.host", "127.0.0.1")
        .config("spark.driver.bindAddress", "127.0.0.1")
        .config("spark.sql.session.timeZone", "UTC")
        .config("spark.sql.shuffle.partitions", "1")
        .config("spark.driver.extraJavaOptions", "-XX:+UseSerialGC -XX:TieredStopAtLevel=1")
        .config("spark.sql.codegen.wholeStage", "false")
        .getOrCreate()
    )
    session.sparkContext.setLogLevel("ERROR")
    try:
        yield session
    finally:
        session.stop()
