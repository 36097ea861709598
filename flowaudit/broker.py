"""The embedded development broker: librdkafka's mock cluster, started through ctypes.

The `confluent-kafka` wheel ships librdkafka, which contains a mock Kafka cluster that speaks the real
protocol on 127.0.0.1. It lives inside this process, in memory only, and keeps a bounded log: a
development and test broker, never a production one. With `FLOWAUDIT_KAFKA_URL` unset, flowaudit
starts one and points its clients at it.
"""

from __future__ import annotations

import ctypes
import glob
import logging
import os
from collections.abc import Iterable

log = logging.getLogger(__name__)

_RD_KAFKA_PRODUCER = 0


def _load_librdkafka() -> ctypes.CDLL:
    import confluent_kafka

    package = os.path.dirname(confluent_kafka.__file__)
    candidates = sorted(glob.glob(os.path.join(package, "..", "confluent_kafka.libs", "librdkafka*.so*")))
    candidates += sorted(glob.glob(os.path.join(package, "librdkafka*.so*")))
    if not candidates:
        raise RuntimeError("librdkafka was not found inside the confluent-kafka wheel")
    lib = ctypes.CDLL(candidates[0])
    lib.rd_kafka_conf_new.restype = ctypes.c_void_p
    lib.rd_kafka_conf_set.argtypes = [
        ctypes.c_void_p,
        ctypes.c_char_p,
        ctypes.c_char_p,
        ctypes.c_char_p,
        ctypes.c_size_t,
    ]
    lib.rd_kafka_conf_set.restype = ctypes.c_int
    lib.rd_kafka_new.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_char_p, ctypes.c_size_t]
    lib.rd_kafka_new.restype = ctypes.c_void_p
    lib.rd_kafka_destroy.argtypes = [ctypes.c_void_p]
    lib.rd_kafka_mock_cluster_new.argtypes = [ctypes.c_void_p, ctypes.c_int]
    lib.rd_kafka_mock_cluster_new.restype = ctypes.c_void_p
    lib.rd_kafka_mock_cluster_destroy.argtypes = [ctypes.c_void_p]
    lib.rd_kafka_mock_cluster_bootstraps.argtypes = [ctypes.c_void_p]
    lib.rd_kafka_mock_cluster_bootstraps.restype = ctypes.c_char_p
    lib.rd_kafka_mock_topic_create.argtypes = [ctypes.c_void_p, ctypes.c_char_p, ctypes.c_int, ctypes.c_int]
    lib.rd_kafka_mock_topic_create.restype = ctypes.c_int
    lib.rd_kafka_err2str.argtypes = [ctypes.c_int]
    lib.rd_kafka_err2str.restype = ctypes.c_char_p
    return lib


class EmbeddedBroker:
    """A mock Kafka cluster bound to 127.0.0.1 for as long as this object is started."""

    def __init__(self, brokers: int = 1) -> None:
        self.brokers = brokers
        self._lib: ctypes.CDLL | None = None
        self._handle: int | None = None
        self._cluster: int | None = None
        self.bootstrap = ""

    def start(self) -> EmbeddedBroker:
        lib = _load_librdkafka()
        conf = lib.rd_kafka_conf_new()
        error = ctypes.create_string_buffer(512)
        # The handle only hosts the mock cluster; keep it from logging that it has no brokers of its own.
        lib.rd_kafka_conf_set(conf, b"log_level", b"0", error, len(error))
        handle = lib.rd_kafka_new(_RD_KAFKA_PRODUCER, conf, error, len(error))
        if not handle:
            raise RuntimeError(f"librdkafka refused to start: {error.value.decode()}")
        cluster = lib.rd_kafka_mock_cluster_new(handle, self.brokers)
        if not cluster:
            lib.rd_kafka_destroy(handle)
            raise RuntimeError("librdkafka could not start its mock cluster")
        self._lib, self._handle, self._cluster = lib, handle, cluster
        self.bootstrap = lib.rd_kafka_mock_cluster_bootstraps(cluster).decode()
        log.warning(
            "started the EMBEDDED DEVELOPMENT broker (librdkafka mock cluster, in memory, bounded log) "
            "at %s; set FLOWAUDIT_KAFKA_URL to use a real Kafka cluster",
            self.bootstrap,
        )
        return self

    @property
    def url(self) -> str:
        return f"kafka://{self.bootstrap}"

    def create_topics(self, names: Iterable[str], partitions: int) -> None:
        if self._lib is None or self._cluster is None:
            raise RuntimeError("the embedded broker is not started")
        for name in names:
            code = self._lib.rd_kafka_mock_topic_create(self._cluster, name.encode(), partitions, 1)
            if code != 0:
                reason = self._lib.rd_kafka_err2str(code).decode()
                raise RuntimeError(f"cannot create topic {name!r} on the embedded broker: {reason}")

    def stop(self) -> None:
        lib, cluster, handle = self._lib, self._cluster, self._handle
        self._cluster = self._handle = None
        if lib is not None and cluster is not None:
            lib.rd_kafka_mock_cluster_destroy(cluster)
        if lib is not None and handle is not None:
            lib.rd_kafka_destroy(handle)

    def __enter__(self) -> EmbeddedBroker:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
