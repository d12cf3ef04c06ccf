"""``python -m collector_plugin.simulator --port 8080``: the simulator without the receiver's CLI."""

from __future__ import annotations

import argparse

from collector_plugin.simulator.standalone import serve


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m collector_plugin.simulator")
    parser.add_argument("--port", type=int, default=8080)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--grow-bps", type=int, default=2048, help="Log bytes appended per second (0: none).")
    parser.add_argument("--flow-limit", help="APIG flow control per credential, e.g. 10/s or 600/min")
    parser.add_argument("--obs-lag", type=float, default=0.0, help="Seconds the OBS copy of a log trails it.")
    args = parser.parse_args(argv)
    serve(args.port, args.host, args.seed, args.grow_bps, flow_limit=args.flow_limit, obs_lag=args.obs_lag)


if __name__ == "__main__":
    main()
