// placecast-uws: the uWebSockets (C++) peer that placecast's CPU per frame is compared with
// (issue 12's "uWebSockets" row), written the way uWebSockets' own examples broadcast: one
// event-loop thread, every WebSocket subscribed to one topic, and a loop timer that cuts the
// pending edits into one PROTOCOL.md batch frame every --batch-ms and `publish`es it.
//
// It serves the same subset of PROTOCOL.md as `placecast-baseline` (bench/src/baseline.rs), so
// the load tester drives all three with the same command: `GET /ws` (with `since`, from an
// in-memory copy of the whole log), `POST /api/v1/place` (any token, no cooldown),
// `POST /api/v1/session`, `GET /api/v1/canvas/info`, `GET /api/v1/canvas` and `GET /healthz`.
// Like the baseline it persists nothing and checks no token: it is the cost of the fan-out and
// of a bare placement request in the fastest broadcaster people use, not a placecast.
//
// Consistency: one thread does everything, so a new connection's catch-up (the log up to the
// last published version) and its subscription happen between two timer ticks: no gap, no
// duplicate. A client whose unsent frames pass --max-backpressure is closed (uWebSockets'
// closeOnBackpressureLimit), the baseline's "too slow" rule, rather than skipped silently.
//
// Build: bench/peers/uws/build.sh (bench/README.md, "The uWebSockets peer").

#include "App.h"

#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace {

// r/place 2017's 16 colors, as the baseline's PALETTE.
const char *const kPalette[16] = {"#ffffff", "#e4e4e4", "#888888", "#222222", "#ffa7d1", "#e50000",
                                  "#e59500", "#a06a42", "#e5d900", "#94e044", "#02be01", "#00d3dd",
                                  "#0083c7", "#0000ea", "#cf6ee4", "#820080"};
constexpr size_t kMaxBody = 4096;
constexpr const char *kTopic = "canvas";

struct Config {
    std::string host = "127.0.0.1";
    int port = 8090;
    uint32_t width = 1000;
    uint32_t height = 1000;
    unsigned batch_ms = 100;
    unsigned edit_stride = 4;
    unsigned max_backpressure = 16 * 1024 * 1024;
};

struct State {
    Config cfg;
    uint64_t version = 0;    // last version placed
    uint64_t published = 0;  // last version sent in a batch; the canvas is at it
    std::vector<uint32_t> pending;
    std::vector<uint32_t> log;  // version v is log[v - 1]
    std::vector<uint8_t> canvas;
    uint64_t sessions = 0;
    uWS::App *app = nullptr;
};

State g;

struct PerSocket {
    std::optional<uint64_t> since;
};

void put_u32(std::string &out, uint32_t x) {
    for (int i = 0; i < 4; i++) out.push_back(char((x >> (8 * i)) & 0xff));
}

void put_u64(std::string &out, uint64_t x) {
    for (int i = 0; i < 8; i++) out.push_back(char((x >> (8 * i)) & 0xff));
}

// PROTOCOL.md's batch message covering (from, to], each edit padded to the stride.
std::string encode_batch(uint64_t from, uint64_t to, const uint32_t *edits, size_t n) {
    std::string out;
    out.reserve(24 + n * g.cfg.edit_stride);
    out.push_back(char(0x01));
    out.push_back(char(g.cfg.edit_stride));
    out.append(2, '\0');
    put_u64(out, from);
    put_u64(out, to);
    put_u32(out, uint32_t(n));
    for (size_t i = 0; i < n; i++) {
        put_u32(out, edits[i]);
        out.append(g.cfg.edit_stride - 4, '\0');
    }
    return out;
}

std::string encode_snapshot() {
    std::string out = "PCS1";
    out.push_back(char(8));
    out.push_back(char(16));
    out.append(2, '\0');
    put_u32(out, g.cfg.width);
    put_u32(out, g.cfg.height);
    put_u64(out, g.published);
    out.append(reinterpret_cast<const char *>(g.canvas.data()), g.canvas.size());
    return out;
}

void cut_batch(us_timer_t *) {
    if (g.pending.empty()) return;
    std::string frame = encode_batch(g.published, g.version, g.pending.data(), g.pending.size());
    for (uint32_t e : g.pending) g.canvas[e >> 5] = uint8_t(e & 31);
    g.pending.clear();
    g.published = g.version;
    g.app->publish(kTopic, frame, uWS::OpCode::BINARY, false);
}

void json(uWS::HttpResponse<false> *res, const char *status, std::string_view body) {
    res->writeStatus(status)->writeHeader("Content-Type", "application/json")->end(body);
}

void error(uWS::HttpResponse<false> *res, const char *status, const char *code, const char *message) {
    std::string b = std::string("{\"error\":{\"code\":\"") + code + "\",\"message\":\"" + message + "\"}}";
    json(res, status, b);
}

// The integer after `"key":` in a small JSON object (the three fields of a placement); no
// full parser, as the baseline's serde is not part of what the comparison measures either.
std::optional<long long> json_int(std::string_view body, std::string_view key) {
    std::string pat = "\"" + std::string(key) + "\":";
    size_t at = body.find(pat);
    if (at == std::string_view::npos) return std::nullopt;
    at += pat.size();
    while (at < body.size() && body[at] == ' ') at++;
    bool neg = at < body.size() && body[at] == '-';
    if (neg) at++;
    size_t start = at;
    long long v = 0;
    while (at < body.size() && body[at] >= '0' && body[at] <= '9' && at - start < 12) v = v * 10 + (body[at++] - '0');
    if (at == start) return std::nullopt;
    return neg ? -v : v;
}

void place(uWS::HttpResponse<false> *res, std::string_view body) {
    auto x = json_int(body, "x"), y = json_int(body, "y"), c = json_int(body, "color");
    if (!x || !y || !c) return error(res, "400 Bad Request", "bad_json", "body must be {x, y, color}");
    if (*x < 0 || *y < 0 || *x >= g.cfg.width || *y >= g.cfg.height)
        return error(res, "400 Bad Request", "bad_coordinates", "pixel outside the canvas");
    if (*c < 0 || *c >= 16) return error(res, "400 Bad Request", "bad_color", "color outside the palette");
    uint32_t edit = (uint32_t(*y * g.cfg.width + *x) << 5) | uint32_t(*c);
    g.version++;
    g.pending.push_back(edit);
    g.log.push_back(edit);
    auto now = std::chrono::duration_cast<std::chrono::milliseconds>(
                   std::chrono::system_clock::now().time_since_epoch())
                   .count();
    char b[128];
    int n = snprintf(b, sizeof b, "{\"version\":%llu,\"next_at_ms\":%lld,\"cooldown_ms\":0}",
                     (unsigned long long)g.version, (long long)now);
    json(res, "200 OK", std::string_view(b, size_t(n)));
}

// Reads a request body of at most kMaxBody bytes, then calls `done` with it.
template <typename F>
void with_body(uWS::HttpResponse<false> *res, F done) {
    auto buf = std::make_shared<std::string>();
    auto aborted = std::make_shared<bool>(false);
    res->onAborted([aborted]() { *aborted = true; });
    res->onData([res, buf, aborted, done](std::string_view chunk, bool last) {
        if (*aborted) return;
        if (buf->size() + chunk.size() > kMaxBody) {
            *aborted = true;
            error(res, "413 Payload Too Large", "body_too_large", "body over 4 KiB");
            res->close();
            return;
        }
        buf->append(chunk);
        if (last) done(res, std::string_view(*buf));
    });
}

std::optional<uint64_t> parse_u64(std::string_view s) {
    if (s.empty() || s.size() > 19) return std::nullopt;
    uint64_t v = 0;
    for (char ch : s) {
        if (ch < '0' || ch > '9') return std::nullopt;
        v = v * 10 + uint64_t(ch - '0');
    }
    return v;
}

bool parse_args(int argc, char **argv, Config &c) {
    for (int i = 1; i + 1 < argc; i += 2) {
        std::string k = argv[i], v = argv[i + 1];
        if (k == "--listen") {
            size_t colon = v.rfind(':');
            if (colon == std::string::npos) return false;
            c.host = v.substr(0, colon);
            c.port = atoi(v.c_str() + colon + 1);
        } else if (k == "--batch-ms") {
            c.batch_ms = unsigned(atoi(v.c_str()));
        } else if (k == "--edit-stride") {
            c.edit_stride = unsigned(atoi(v.c_str()));
        } else if (k == "--width") {
            c.width = uint32_t(atoi(v.c_str()));
        } else if (k == "--height") {
            c.height = uint32_t(atoi(v.c_str()));
        } else if (k == "--max-backpressure") {
            c.max_backpressure = unsigned(atoi(v.c_str()));
        } else if (k == "--cooldown") {
            // accepted so placecast's command line works, as the baseline does
        } else {
            return false;
        }
    }
    return argc % 2 == 1 && c.port > 0 && c.port < 65536 && c.batch_ms >= 1 && c.batch_ms <= 10000 &&
           c.edit_stride >= 4 && c.edit_stride <= 64 && c.width > 0 && c.height > 0 &&
           uint64_t(c.width) * c.height <= (1ull << 27);
}

}  // namespace

int main(int argc, char **argv) {
    if (!parse_args(argc, argv, g.cfg)) {
        fprintf(stderr,
                "usage: placecast-uws [--listen 127.0.0.1:8090] [--batch-ms 100] [--edit-stride 4..64] "
                "[--width W] [--height H] [--max-backpressure BYTES]\n");
        return 2;
    }
    g.canvas.assign(size_t(g.cfg.width) * g.cfg.height, 0);

    uWS::App app;
    g.app = &app;
    app.ws<PerSocket>("/ws",
                      {
                          .compression = uWS::DISABLED,
                          .maxPayloadLength = 16 * 1024,
                          .idleTimeout = 0,
                          .maxBackpressure = g.cfg.max_backpressure,
                          .closeOnBackpressureLimit = true,
                          .sendPingsAutomatically = false,
                          .upgrade =
                              [](auto *res, auto *req, auto *context) {
                                  PerSocket ps;
                                  std::string_view s = req->getQuery("since");
                                  if (s.data() != nullptr) {
                                      ps.since = parse_u64(s);
                                      if (!ps.since)
                                          return error(res, "400 Bad Request", "bad_since",
                                                       "since must be a number");
                                  }
                                  res->template upgrade<PerSocket>(
                                      std::move(ps), req->getHeader("sec-websocket-key"),
                                      req->getHeader("sec-websocket-protocol"),
                                      req->getHeader("sec-websocket-extensions"), context);
                              },
                          .open =
                              [](auto *ws) {
                                  PerSocket *ps = ws->getUserData();
                                  char hello[128];
                                  int n = snprintf(hello, sizeof hello,
                                                   "{\"type\":\"hello\",\"version\":%llu,\"cooldown_ms\":0,"
                                                   "\"user\":null}",
                                                   (unsigned long long)g.published);
                                  ws->send(std::string_view(hello, size_t(n)), uWS::OpCode::TEXT);
                                  if (ps->since && *ps->since > g.version) {
                                      ws->end(1008, "since ahead of the server");
                                      return;
                                  }
                                  if (ps->since && *ps->since < g.published) {
                                      uint64_t v = *ps->since;
                                      ws->send(encode_batch(v, g.published, g.log.data() + v, g.published - v),
                                               uWS::OpCode::BINARY);
                                  }
                                  ws->subscribe(kTopic);
                              },
                      })
        .get("/api/v1/canvas/info",
             [](auto *res, auto *) {
                 std::string b = "{\"width\":" + std::to_string(g.cfg.width) +
                                 ",\"height\":" + std::to_string(g.cfg.height) + ",\"palette\":[";
                 for (int i = 0; i < 16; i++) b += std::string(i ? ",\"" : "\"") + kPalette[i] + "\"";
                 b += "],\"cooldown_ms\":0,\"version\":" + std::to_string(g.published) +
                      ",\"edit_stride\":" + std::to_string(g.cfg.edit_stride) + "}";
                 json(res, "200 OK", b);
             })
        .get("/api/v1/canvas",
             [](auto *res, auto *) {
                 std::string v = std::to_string(g.published);
                 res->writeStatus("200 OK")
                     ->writeHeader("Content-Type", "application/octet-stream")
                     ->writeHeader("X-Canvas-Version", v)
                     ->writeHeader("ETag", "\"" + v + "\"")
                     ->writeHeader("Cache-Control", "public, max-age=1")
                     ->end(encode_snapshot());
             })
        .get("/healthz",
             [](auto *res, auto *) {
                 json(res, "200 OK", "{\"status\":\"ok\",\"version\":" + std::to_string(g.published) + "}");
             })
        .post("/api/v1/session",
              [](auto *res, auto *) {
                  with_body(res, [](uWS::HttpResponse<false> *r, std::string_view) {
                      uint64_t n = ++g.sessions;
                      std::string b = "{\"token\":\"anon-" + std::to_string(n) + ".0.uws\",\"user\":\"anon-" +
                                      std::to_string(n) + "\",\"expires_at\":0}";
                      json(r, "200 OK", b);
                  });
              })
        .post("/api/v1/place", [](auto *res, auto *) { with_body(res, place); })
        .any("/*", [](auto *res, auto *) { error(res, "404 Not Found", "not_found", "no such endpoint"); })
        .listen(g.cfg.host, g.cfg.port, [](auto *sock) {
            if (!sock) {
                fprintf(stderr, "error: cannot listen on %s:%d\n", g.cfg.host.c_str(), g.cfg.port);
                exit(1);
            }
            fprintf(stderr, "placecast-uws listening on %s:%d\n", g.cfg.host.c_str(), g.cfg.port);
        });

    us_timer_t *timer = us_create_timer((us_loop_t *)uWS::Loop::get(), 0, 0);
    us_timer_set(timer, cut_batch, int(g.cfg.batch_ms), int(g.cfg.batch_ms));
    app.run();
    return 0;
}
