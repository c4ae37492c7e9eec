"""The library that the commands (scripts/), the load tests (loadtests/) and the tests share: the archive builder,
the TorchServe runner, generated pictures (shapes, probe, hostile corpus), load-test workloads and reports, and
the benchmark. Nothing here runs inside a TorchServe worker; that code is the `anysize` package in handlers/."""
