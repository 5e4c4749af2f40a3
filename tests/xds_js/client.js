#!/usr/bin/env node
// A grpc-js xDS client for grpc-balancer's tests and benchmarks.
//
// It dials a target (xds:///NAME) through @grpc/grpc-js-xds, whose bootstrap comes from
// the environment (GRPC_XDS_BOOTSTRAP_CONFIG or GRPC_XDS_BOOTSTRAP), calls
// /greeter.Greeter/SayHello and prints one JSON object per line on stdout:
//
//   {"event": "start", "target": ..., "pid": ...}
//   {"event": "call", "i": 0, "ok": true, "port": 50051, "message": "...",
//    "t_ms": <wall clock at the reply, ms since the epoch>, "latency_ms": 1.2}
//   {"event": "call", "i": 1, "ok": false, "code": 14, "details": "..."}
//   {"event": "end", "calls": N, "ok": K}
//
// Options: --target URI (required), --count N (0: until stdin closes or SIGTERM),
// --interval-ms M (pause between calls, default 0), --deadline-ms D (per call, default
// 2000), --name NAME (the request's name), --proto PATH (greeter.proto), --header K=V
// (request metadata, repeatable: e.g. the header a ring_hash route hashes).
// Calls are sequential: one in flight, so each line is the client's choice at that time.
"use strict";

const path = require("path");
const { performance } = require("perf_hooks");
const grpc = require("@grpc/grpc-js");
const protoLoader = require("@grpc/proto-loader");
const xds = require("@grpc/grpc-js-xds");

function parseArgs(argv) {
  const opts = {
    target: null,
    count: 0,
    intervalMs: 0,
    deadlineMs: 2000,
    name: "grpc-js",
    headers: [],
    proto: path.join(__dirname, "..", "..", "src", "grpc_balancer", "demo", "greeter.proto"),
  };
  for (let i = 0; i < argv.length; i += 2) {
    const key = argv[i];
    const value = argv[i + 1];
    if (value === undefined) throw new Error(`${key} needs a value`);
    switch (key) {
      case "--target": opts.target = value; break;
      case "--count": opts.count = Number(value); break;
      case "--interval-ms": opts.intervalMs = Number(value); break;
      case "--deadline-ms": opts.deadlineMs = Number(value); break;
      case "--name": opts.name = value; break;
      case "--proto": opts.proto = value; break;
      case "--header": {
        const eq = value.indexOf("=");
        if (eq < 1) throw new Error(`--header wants KEY=VALUE, got ${value}`);
        opts.headers.push([value.slice(0, eq), value.slice(eq + 1)]);
        break;
      }
      default: throw new Error(`unknown option ${key}`);
    }
  }
  if (!opts.target) throw new Error("--target is required");
  return opts;
}

function emit(obj) {
  process.stdout.write(JSON.stringify(obj) + "\n");
}

function wallMs() {
  return performance.timeOrigin + performance.now();
}

function sleep(ms) {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

async function main() {
  const opts = parseArgs(process.argv.slice(2));
  xds.register();
  const definition = protoLoader.loadSync(opts.proto, { keepCase: true });
  const Greeter = grpc.loadPackageDefinition(definition).greeter.Greeter;
  const client = new Greeter(opts.target, grpc.credentials.createInsecure());

  const metadata = new grpc.Metadata();
  for (const [key, value] of opts.headers) metadata.add(key, value);

  let stopping = false;
  const stop = () => { stopping = true; };
  process.on("SIGTERM", stop);
  process.on("SIGINT", stop);
  if (opts.count === 0) {
    process.stdin.on("end", stop);
    process.stdin.on("close", stop);
    process.stdin.resume();
  }

  emit({ event: "start", target: opts.target, pid: process.pid, grpc_js: require("@grpc/grpc-js/package.json").version, grpc_js_xds: require("@grpc/grpc-js-xds/package.json").version });
  let calls = 0;
  let ok = 0;
  while (!stopping && (opts.count === 0 || calls < opts.count)) {
    const i = calls++;
    const started = performance.now();
    const deadline = new Date(Date.now() + opts.deadlineMs);
    const result = await new Promise((resolve) => {
      client.SayHello({ name: opts.name }, metadata, { deadline }, (err, reply) => {
        resolve({ err, reply });
      });
    });
    const line = { event: "call", i, t_ms: wallMs(), latency_ms: performance.now() - started };
    if (result.err) {
      line.ok = false;
      line.code = result.err.code;
      line.details = result.err.details;
    } else {
      ok++;
      const match = /\(from :(\d+)\)/.exec(result.reply.message);
      line.ok = true;
      line.port = match ? Number(match[1]) : null;
      line.message = result.reply.message;
    }
    emit(line);
    if (opts.intervalMs > 0) await sleep(opts.intervalMs);
  }
  emit({ event: "end", calls, ok });
  client.close();
  process.exit(0);
}

main().catch((err) => {
  process.stderr.write(`client.js: ${err && err.stack ? err.stack : err}\n`);
  process.exit(2);
});
