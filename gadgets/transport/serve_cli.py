"""``qmapinr serve`` options -> :class:`~qmapinr.gadgets.transport.server.MRDServer` (limits, deadlines)."""

from __future__ import annotations

import argparse

from qmapinr.gadgets.transport.handler import DEFAULT_CHAINS
from qmapinr.recon.methods.budget import Limits, parse_size

DEFAULT_PORT = 9002


def add_serve_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--host", default="127.0.0.1",
                        help="address to listen on (default 127.0.0.1; 0.0.0.0 for all interfaces)")
    parser.add_argument("--port", type=int, default=DEFAULT_PORT,
                        help="TCP port (default %(default)s; 0 = any free port)")
    parser.add_argument("--max-connections", type=int, default=4, help="clients served at once (default 4)")
    parser.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    parser.add_argument("--when-busy", choices=["wait", "reject"], default="wait",
                        help="extra clients wait in the backlog or get TEXT 'busy' + CLOSE (default wait)")
    parser.add_argument("--workers", choices=["process", "thread"], default="process")
    parser.add_argument("--chains", default=None,
                        help=f"chain registry MODULE:ATTR (default {DEFAULT_CHAINS})")
    parser.add_argument("--config-dir", default=None,
                        help="folder of NAME.xml stream configurations used when a client sends only a name")
    parser.add_argument("--shutdown-timeout", type=float, default=60.0,
                        help="seconds running connections may finish after SIGTERM (default 60)")
    parser.add_argument("--idle-timeout", type=float, default=600.0,
                        help="seconds a read/write on a client may block (default 600; 0 = no limit)")
    parser.add_argument("--handshake-timeout", type=float, default=30.0,
                        help="seconds from connect until config and header must have arrived (default 30)")
    parser.add_argument("--stream-timeout", type=float, default=1800.0,
                        help="seconds from connect until the client's CLOSE must have arrived (default 1800)")
    parser.add_argument("--session-timeout", type=float, default=0.0,
                        help="seconds from connect to the end of a session; 0 (default) = sized from the "
                             "chain's estimate: 4 x estimated compute + 120 s after the client's CLOSE")
    parser.add_argument("--max-memory", default=None, metavar="SIZE",
                        help="memory one session may use, e.g. 8G, 512M (default: host RAM / max-connections "
                             "x 0.8); larger estimates are refused before allocating")
    parser.add_argument("--max-epochs", type=int, default=None, help="largest epochs a client may ask for")
    parser.add_argument("--max-matrix", type=int, default=None,
                        help="largest matrix size per dimension a header may declare")
    parser.add_argument("--save-stream", default=None, metavar="DIR",
                        help="save every received stream as DIR/conn-N-TIME.h5 (ISMRMRD; replayable)")


def server_options(args: argparse.Namespace) -> dict:
    """Keyword arguments of :class:`~qmapinr.gadgets.transport.server.MRDServer` from parsed ``serve`` options.

    Raises ValueError for a bad ``--max-memory``.
    """
    limits = Limits.for_host(args.max_connections, max_memory=parse_size(args.max_memory),
                             max_epochs=args.max_epochs, max_matrix=args.max_matrix)
    return dict(
        host=args.host, port=args.port, max_connections=args.max_connections, chains=args.chains,
        workers=args.workers, when_busy=args.when_busy, shutdown_timeout=args.shutdown_timeout,
        idle_timeout=args.idle_timeout or None, config_dir=args.config_dir,
        handshake_timeout=args.handshake_timeout or None, stream_timeout=args.stream_timeout or None,
        session_timeout=args.session_timeout or None, limits=limits, save_stream=args.save_stream,
    )
