// SPDX-License-Identifier: BSD-2-Clause
//
// C++ harness of the Verilator back end (sim/verilator/backend.py).
//
// It is compiled together with the Verilated model of one design into a shared library that
// Python drives through ctypes (the `extern "C"` functions at the end). The design-specific part
// -- which C++ member is which AXI wire -- comes from the generated header `vsim_ports.h`, which
// defines `vsim_bind()`; the macros VSIM_NUM_PORTS, VSIM_HAS_RST and VSIM_TRACE (0: none,
// 1: VCD, 2: FST) come from the compiler command line.
//
// One clock cycle (`Sim::edge()`):
//   1. sample every output the harness reacts to (the values of the cycle that ends now);
//   2. rising edge: clk = 1, eval;
//   3. the AXI4-Lite manager, the DDR model of each AXI port (in port order) and the reset driver
//      compute their outputs for the new cycle from the samples of step 1 and write them;
//   4. clk = 0, eval (the new inputs settle).
// This is exactly the order of events of sim/ddr.py's DDRModel testbench and of the
// AmaranthSim driver, so both back ends agree cycle for cycle.
//
// The DDR model mirrors sim/ddr.py line for line, including its splitmix64 random generator and
// the order in which it draws from it. Keep the two in step.

#include <algorithm>
#include <cinttypes>
#include <cstdarg>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <deque>
#include <string>
#include <vector>

#include "verilated.h"
#if VSIM_TRACE == 1
#include "verilated_vcd_c.h"
#elif VSIM_TRACE == 2
#include "verilated_fst_c.h"
#endif

#define VSIM_API extern "C" __attribute__((visibility("default")))

// -- access to one port of the model, whatever its C++ type -----------------------------------

struct Sig {
    void *p = nullptr;
    uint16_t bytes = 0;     // storage size: 1, 2, 4, 8, or 4 * words for VlWide
    uint16_t width = 0;

    uint64_t get() const {
        switch (bytes) {
        case 1: return *static_cast<const uint8_t *>(p);
        case 2: return *static_cast<const uint16_t *>(p);
        case 4: return *static_cast<const uint32_t *>(p);
        default: {
            uint64_t v;
            std::memcpy(&v, p, 8);
            return width < 64 ? v & ((uint64_t(1) << width) - 1) : v;
        }
        }
    }
    void set(uint64_t v) {
        if (width < 64) v &= (uint64_t(1) << width) - 1;
        switch (bytes) {
        case 1: *static_cast<uint8_t *>(p) = uint8_t(v); break;
        case 2: *static_cast<uint16_t *>(p) = uint16_t(v); break;
        case 4: *static_cast<uint32_t *>(p) = uint32_t(v); break;
        case 8: *static_cast<uint64_t *>(p) = v; break;
        default:
            std::memset(p, 0, bytes);
            std::memcpy(p, &v, 8);
        }
    }
    // Whole-byte values (data, strobes): little-endian bytes, as the host stores them.
    void get_bytes(uint8_t *dst, size_t n) const { std::memcpy(dst, p, n); }
    void set_bytes(const uint8_t *src, size_t n) { std::memcpy(p, src, n); }
    void set_zero() { std::memset(p, 0, bytes); }
};

static inline Sig mk(CData *p, int w) { return Sig{p, 1, uint16_t(w)}; }
static inline Sig mk(SData *p, int w) { return Sig{p, 2, uint16_t(w)}; }
static inline Sig mk(IData *p, int w) { return Sig{p, 4, uint16_t(w)}; }
static inline Sig mk(QData *p, int w) { return Sig{p, 8, uint16_t(w)}; }
template <std::size_t N>
static inline Sig mk(VlWide<N> *p, int w) { return Sig{p->data(), uint16_t(4 * N), uint16_t(w)}; }

struct LitePorts {
    Sig awaddr, awprot, awvalid, awready, wdata, wstrb, wvalid, wready, bresp, bvalid, bready;
    Sig araddr, arprot, arvalid, arready, rdata, rresp, rvalid, rready;
    bool present = false;
};

struct AxiPorts {
    Sig awaddr, awlen, awsize, awburst, awid, awcache, awprot, awvalid, awready;
    Sig wdata, wstrb, wlast, wvalid, wready, bresp, bid, bvalid, bready;
    Sig araddr, arlen, arsize, arburst, arid, arcache, arprot, arvalid, arready;
    Sig rdata, rresp, rlast, rid, rvalid, rready;
    unsigned addr_width = 0, data_bytes = 0, id_width = 0;
};

struct Ports {
    Sig clk, rst, irq, status;
    LitePorts lite;
    AxiPorts axi[VSIM_NUM_PORTS > 0 ? VSIM_NUM_PORTS : 1];
};

#include "Vtop.h"
#include "vsim_ports.h"     // generated: vsim_bind(Vtop *, Ports &)

// -- the random generator of sim/ddr.py (splitmix64) ------------------------------------------

struct SplitMix64 {
    uint64_t state;
    explicit SplitMix64(uint64_t seed = 0) : state(seed) {}
    uint64_t next() {
        uint64_t z = (state += 0x9E3779B97F4A7C15ull);
        z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
        z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
        return z ^ (z >> 31);
    }
    uint64_t below(uint64_t n) { return next() % n; }
    double random() { return double(next() >> 11) * (1.0 / 9007199254740992.0); }
};

struct Params {
    uint64_t ddr_size, ddr_base;
    uint64_t latency, jitter, max_outstanding;
    double bytes_per_cycle;     // <= 0: one beat per cycle
    uint64_t seed;              // port i uses seed + i
    double p_addr_stall;
    uint64_t slverr_lo, slverr_hi;
    int slverr;
};

enum { OKAY = 0, SLVERR = 2 };

struct Sim;

static std::string hex(uint64_t v) {
    char buf[24];
    std::snprintf(buf, sizeof buf, "0x%" PRIx64, v);
    return buf;
}

// -- DDR model of one AXI4 port: a transcription of sim/ddr.py's DDRModel.testbench ----------

struct DDRPort {
    struct ReadBurst { uint64_t off, left, id; unsigned resp; uint64_t first; };
    struct WriteBurst { uint64_t off, left, id; unsigned resp; };
    struct Response { uint64_t first, id; unsigned resp; };

    AxiPorts *bus = nullptr;
    Sim *sim = nullptr;
    const Params *prm = nullptr;
    uint8_t *mem = nullptr;
    unsigned nb = 0;
    SplitMix64 rng;
    double bpc = 0, capacity = 0, tokens = 0;
    std::deque<ReadBurst> reads;
    std::deque<WriteBurst> writes;
    std::deque<Response> responses;
    // What the model drives (not read back from the model).
    bool rvalid = false, bvalid = false, arready = false, awready = false, wready = false;
    uint64_t cycle = 0;
    // DDRStats
    uint64_t st_cycles = 0, st_busy = 0, st_rbytes = 0, st_wbytes = 0, st_rbursts = 0,
             st_wbursts = 0;
    // Values sampled before the clock edge.
    bool s_arvalid, s_rready, s_awvalid, s_wvalid, s_bready;
    uint64_t s_ar[5], s_aw[5];      // addr, len, size, burst, id (only when a transfer happened)
    bool s_wlast;
    uint8_t s_wdata[128], s_wstrb[16];
    std::vector<uint8_t> rbuf;

    void init(AxiPorts *b, Sim *s, const Params *p, uint8_t *m, unsigned index) {
        bus = b; sim = s; prm = p; mem = m;
        nb = b->data_bytes;
        rng = SplitMix64(p->seed + index);
        bpc = p->bytes_per_cycle > 0 ? p->bytes_per_cycle : double(nb);
        // One beat plus one cycle's credit below a beat per cycle (as sim.ddr.DDRModel).
        capacity = bpc < nb ? nb + bpc : bpc;
        tokens = capacity;
        rbuf.assign(nb, 0);
    }

    uint64_t jitter() { return prm->jitter ? rng.below(prm->jitter + 1) : 0; }

    void sample() {
        s_arvalid = bus->arvalid.get();
        s_rready = bus->rready.get();
        s_awvalid = bus->awvalid.get();
        s_wvalid = bus->wvalid.get();
        s_bready = bus->bready.get();
        if (s_arvalid && arready) {
            s_ar[0] = bus->araddr.get(); s_ar[1] = bus->arlen.get(); s_ar[2] = bus->arsize.get();
            s_ar[3] = bus->arburst.get(); s_ar[4] = bus->arid.get();
        }
        if (s_awvalid && awready) {
            s_aw[0] = bus->awaddr.get(); s_aw[1] = bus->awlen.get(); s_aw[2] = bus->awsize.get();
            s_aw[3] = bus->awburst.get(); s_aw[4] = bus->awid.get();
        }
        if (s_wvalid && wready) {
            bus->wdata.get_bytes(s_wdata, nb);
            bus->wstrb.get_bytes(s_wstrb, (nb + 7) / 8);
            s_wlast = bus->wlast.get();
        }
    }

    uint16_t handshakes() const {
        return uint16_t(s_arvalid | (arready << 1) | (rvalid << 2) | (s_rready << 3) |
                        (s_awvalid << 4) | (awready << 5) | (s_wvalid << 6) | (wready << 7) |
                        (bvalid << 8) | (s_bready << 9));
    }

    // Returns false (with Sim::error set) on an access the model cannot serve.
    bool check_burst(const char *kind, const uint64_t *f, uint64_t *off, unsigned *resp);
    bool update(bool rst);
};

// -- AXI4-Lite manager ------------------------------------------------------------------------

struct LiteManager {
    enum State { IDLE, WRITE, READ } state = IDLE;
    LitePorts *bus = nullptr;
    bool pending = false, is_write = false, done = false, abort = false;
    uint64_t addr = 0, data = 0, strb = 0;
    unsigned resp = 0;
    uint64_t rdata = 0;
    bool awvalid = false, wvalid = false, bready = false, arvalid = false, rready = false;
    // samples
    bool s_awready, s_wready, s_bvalid, s_arready, s_rvalid;
    unsigned s_bresp, s_rresp;
    uint64_t s_rdata;

    void sample() {
        if (!bus->present) return;
        s_awready = bus->awready.get();
        s_wready = bus->wready.get();
        s_bvalid = bus->bvalid.get();
        s_arready = bus->arready.get();
        s_rvalid = bus->rvalid.get();
        s_bresp = unsigned(bus->bresp.get());
        s_rresp = unsigned(bus->rresp.get());
        s_rdata = bus->rdata.get();
    }
    uint16_t handshakes() const {
        if (!bus->present) return 0;
        return uint16_t(arvalid | (s_arready << 1) | (s_rvalid << 2) | (rready << 3) |
                        (awvalid << 4) | (s_awready << 5) | (wvalid << 6) | (s_wready << 7) |
                        (s_bvalid << 8) | (bready << 9));
    }
    void drive() {
        bus->awvalid.set(awvalid); bus->wvalid.set(wvalid); bus->bready.set(bready);
        bus->arvalid.set(arvalid); bus->rready.set(rready);
    }
    void update() {
        if (!bus->present) return;
        if (abort) {                        // after a timeout, and on reset()
            abort = false;
            state = IDLE;
            pending = false;
            awvalid = wvalid = bready = arvalid = rready = false;
        } else if (state == WRITE) {
            if (awvalid && s_awready) awvalid = false;
            if (wvalid && s_wready) wvalid = false;
            if (bready && s_bvalid) {
                bready = false;
                resp = s_bresp;
                state = IDLE;
                done = true;
            }
        } else if (state == READ) {
            if (arvalid && s_arready) arvalid = false;
            if (rready && s_rvalid) {
                rready = false;
                resp = s_rresp;
                rdata = s_rdata;
                state = IDLE;
                done = true;
            }
        }
        if (state == IDLE && pending) {
            pending = false;
            if (is_write) {
                state = WRITE;
                bus->awaddr.set(addr); bus->awprot.set(0);
                bus->wdata.set(data); bus->wstrb.set(strb);
                awvalid = wvalid = bready = true;
            } else {
                state = READ;
                bus->araddr.set(addr); bus->arprot.set(0);
                arvalid = rready = true;
            }
        }
        drive();
    }
};

// -- the simulation ---------------------------------------------------------------------------

struct Sim {
    VerilatedContext *ctx = nullptr;
    Vtop *top = nullptr;
#if VSIM_TRACE == 1
    VerilatedVcdC *tfp = nullptr;
#elif VSIM_TRACE == 2
    VerilatedFstC *tfp = nullptr;
#endif
    Params prm;
    std::vector<uint8_t> mem;
    Ports ports;
    DDRPort ddr[VSIM_NUM_PORTS > 0 ? VSIM_NUM_PORTS : 1];
    LiteManager lite;
    uint64_t cycles = 0;
    uint64_t time = 0;
    uint64_t rst_left = 0;
    bool rst = false;
    std::string error;
    bool failed = false;
    bool recording = false;
    std::vector<uint32_t> record;

    void fail(const std::string &msg) {
        if (!failed) error = msg;
        failed = true;
    }

    // Waveform time is in ps (Amaranth emits no `timescale, so Verilator's default 1ps
    // applies): a 10 ns clock, like AmaranthSim's, with edges at 5 ns + 10 ns * n.
    void dump() {
#if VSIM_TRACE
        if (tfp) tfp->dump(time);
#endif
        time += 5000;
    }

    // One clock cycle; returns the flags (irq | status << 1) of the cycle that ended.
    uint64_t edge() {
        bool s_rst = rst;
        lite.sample();
        for (int i = 0; i < VSIM_NUM_PORTS; i++) ddr[i].sample();
        uint64_t flags = (ports.irq.p ? ports.irq.get() : 0) |
                         (ports.status.p ? ports.status.get() << 1 : 0);
        if (recording) {
            record.push_back(uint32_t(flags));
            record.push_back(lite.handshakes());
            for (int i = 0; i < VSIM_NUM_PORTS; i++) record.push_back(ddr[i].handshakes());
        }
        ports.clk.set(1);
        top->eval();
        dump();
        cycles++;
        lite.update();
        for (int i = 0; i < VSIM_NUM_PORTS; i++)
            if (!ddr[i].update(s_rst)) break;
        if (rst_left) {
            rst = true;
            rst_left--;
        } else {
            rst = false;
        }
#if VSIM_HAS_RST
        ports.rst.set(rst);
#endif
        ports.clk.set(0);
        top->eval();
        dump();
        return flags;
    }
};

bool DDRPort::check_burst(const char *kind, const uint64_t *f, uint64_t *off, unsigned *resp) {
    uint64_t addr = f[0], length = f[1] + 1, size = f[2], burst = f[3];
    std::string where = std::string(kind) + " burst at " + hex(addr) + ": ";
    if (burst != 1) {
        sim->fail(where + "burst type " + std::to_string(burst) + " is not INCR");
        return false;
    }
    if ((uint64_t(1) << size) != nb) {
        sim->fail(where + std::to_string(uint64_t(1) << size) + "-byte beats, the model serves "
                  "full-width " + std::to_string(nb) + "-byte beats only");
        return false;
    }
    if (addr % nb) {
        sim->fail(where + "address not aligned to " + std::to_string(nb) + " bytes");
        return false;
    }
    uint64_t bytes = length * nb;
    if (addr < prm->ddr_base || addr - prm->ddr_base + bytes > prm->ddr_size) {
        sim->fail(where + "access of " + std::to_string(bytes) + " bytes at " + hex(addr) +
                  " is outside the memory [" + hex(prm->ddr_base) + ", " +
                  hex(prm->ddr_base + prm->ddr_size) + ")");
        return false;
    }
    *off = addr - prm->ddr_base;
    *resp = OKAY;
    if (prm->slverr && addr < prm->slverr_hi && prm->slverr_lo < addr + bytes) *resp = SLVERR;
    return true;
}

bool DDRPort::update(bool rst) {
    AxiPorts &b = *bus;
    cycle++;
    st_cycles++;
    if (rst) return true;

    // Transfers of the cycle that just ended.
    bool r_beat = rvalid && s_rready;
    bool w_beat = wready && s_wvalid;
    if (r_beat) {
        st_rbytes += nb;
        ReadBurst &head = reads.front();
        head.off += nb;
        if (--head.left == 0) reads.pop_front();
    }
    if (s_arvalid && arready) {
        uint64_t off;
        unsigned resp;
        if (!check_burst("read", s_ar, &off, &resp)) return false;
        uint64_t first = cycle - 1 + prm->latency;
        first += jitter();
        reads.push_back({off, s_ar[1] + 1, s_ar[4], resp, first});
        st_rbursts++;
    }
    if (bvalid && s_bready) responses.pop_front();
    if (w_beat) {
        st_wbytes += nb;
        WriteBurst &head = writes.front();
        uint64_t off = head.off;
        if (head.resp == OKAY) {
            for (unsigned i = 0; i < nb; i++)
                if ((s_wstrb[i >> 3] >> (i & 7)) & 1) mem[off + i] = s_wdata[i];
        }
        head.off += nb;
        head.left--;
        if (s_wlast != (head.left == 0)) {
            sim->fail("write burst to " + hex(prm->ddr_base + off) + ": wlast=" +
                      std::to_string(int(s_wlast)) + " with " + std::to_string(head.left) +
                      " beats left");
            return false;
        }
        if (head.left == 0) {
            uint64_t first = cycle - 1 + prm->latency;
            first += jitter();
            responses.push_back({first, head.id, head.resp});
            writes.pop_front();
        }
    } else if (wready) {
        tokens += nb;       // refund the unused W ready
    }
    if (s_awvalid && awready) {
        uint64_t off;
        unsigned resp;
        if (!check_burst("write", s_aw, &off, &resp)) return false;
        writes.push_back({off, s_aw[1] + 1, s_aw[4], resp});
        st_wbursts++;
    }
    if (r_beat || w_beat) st_busy++;

    // Outputs for the cycle that starts now. R and W take turns at the bandwidth budget.
    tokens = std::min(capacity, tokens + bpc);
    bool want_r = (!rvalid || r_beat) && !reads.empty() && reads.front().first <= cycle;
    bool grant_r = false, grant_w = false;
    if (want_r && ((cycle & 1) || writes.empty()) && tokens >= nb) {
        grant_r = true;
        tokens -= nb;
    }
    if (!writes.empty() && tokens >= nb) {
        grant_w = true;
        tokens -= nb;
    }
    if (want_r && !grant_r && tokens >= nb) {
        grant_r = true;
        tokens -= nb;
    }
    if (grant_r) {
        const ReadBurst &head = reads.front();
        if (head.resp == OKAY)
            std::memcpy(rbuf.data(), mem + head.off, nb);
        else
            std::memset(rbuf.data(), 0, nb);
        b.rdata.set_bytes(rbuf.data(), nb);
        b.rresp.set(head.resp);
        b.rlast.set(head.left == 1);
        b.rid.set(head.id);
        b.rvalid.set(1);
        rvalid = true;
    } else if (r_beat) {
        b.rvalid.set(0);
        rvalid = false;
    }
    if ((!bvalid || s_bready) && !responses.empty() && responses.front().first <= cycle) {
        const Response &r = responses.front();
        b.bresp.set(r.resp);
        b.bid.set(r.id);
        b.bvalid.set(1);
        bvalid = true;
    } else if (bvalid && s_bready) {
        b.bvalid.set(0);
        bvalid = false;
    }
    if (grant_w != wready) {
        wready = grant_w;
        b.wready.set(wready);
    }
    bool stall = prm->p_addr_stall != 0.0 && rng.random() < prm->p_addr_stall;
    bool ready = reads.size() < prm->max_outstanding && !stall;
    if (ready != arready) {
        arready = ready;
        b.arready.set(ready);
    }
    stall = prm->p_addr_stall != 0.0 && rng.random() < prm->p_addr_stall;
    ready = writes.size() + responses.size() < prm->max_outstanding && !stall;
    if (ready != awready) {
        awready = ready;
        b.awready.set(ready);
    }
    return true;
}

// -- C API ------------------------------------------------------------------------------------

enum { VSIM_OK = 0, VSIM_TIMEOUT = 1, VSIM_FAILED = -1 };

VSIM_API int vsim_num_ports() { return VSIM_NUM_PORTS; }

VSIM_API int vsim_trace_kind() { return VSIM_TRACE; }

VSIM_API void *vsim_new(const char *trace_path, uint64_t ddr_size, uint64_t ddr_base,
                        uint64_t latency, double bytes_per_cycle, uint64_t jitter, uint64_t seed,
                        uint64_t max_outstanding, double p_addr_stall, int slverr,
                        uint64_t slverr_lo, uint64_t slverr_hi) {
    Sim *s = new Sim;
    s->prm = Params{ddr_size, ddr_base, latency, jitter, max_outstanding, bytes_per_cycle, seed,
                    p_addr_stall, slverr_lo, slverr_hi, slverr};
    s->mem.assign(ddr_size, 0);
    s->ctx = new VerilatedContext;
    s->ctx->randReset(0);           // anything Amaranth left without an initial value is 0
    s->top = new Vtop(s->ctx, "TOP");
    vsim_bind(s->top, s->ports);
    s->lite.bus = &s->ports.lite;
    for (int i = 0; i < VSIM_NUM_PORTS; i++)
        s->ddr[i].init(&s->ports.axi[i], s, &s->prm, s->mem.data(), unsigned(i));
#if VSIM_TRACE
    if (trace_path && *trace_path) {
        s->ctx->traceEverOn(true);
#if VSIM_TRACE == 1
        s->tfp = new VerilatedVcdC;
#else
        s->tfp = new VerilatedFstC;
#endif
        s->top->trace(s->tfp, 99);
        s->tfp->open(trace_path);
    }
#else
    (void)trace_path;
#endif
    s->ports.clk.set(0);
#if VSIM_HAS_RST
    s->ports.rst.set(0);
#endif
    s->top->eval();
    s->dump();
    return s;
}

VSIM_API void vsim_free(void *h) {
    Sim *s = static_cast<Sim *>(h);
    s->top->final();
#if VSIM_TRACE
    if (s->tfp) {
        s->tfp->close();
        delete s->tfp;
    }
#endif
    delete s->top;
    delete s->ctx;
    delete s;
}

VSIM_API void vsim_flush(void *h) {
#if VSIM_TRACE
    Sim *s = static_cast<Sim *>(h);
    if (s->tfp) s->tfp->flush();
#else
    (void)h;
#endif
}

VSIM_API const char *vsim_error(void *h) { return static_cast<Sim *>(h)->error.c_str(); }

VSIM_API uint8_t *vsim_mem(void *h) { return static_cast<Sim *>(h)->mem.data(); }

VSIM_API uint64_t vsim_cycles(void *h) { return static_cast<Sim *>(h)->cycles; }

VSIM_API int vsim_step(void *h, uint64_t n) {
    Sim *s = static_cast<Sim *>(h);
    if (s->failed) return VSIM_FAILED;
    for (uint64_t i = 0; i < n; i++) {
        s->edge();
        if (s->failed) return VSIM_FAILED;
    }
    return VSIM_OK;
}

// Step until the conditions hold on the values of a cycle as it ends: condition i holds when
// (flags & masks[i]) == values[i]; all of them (any == 0) or one of them (any != 0) must hold.
// *stepped is the number of cycles run.
VSIM_API int vsim_run_until(void *h, uint64_t max_cycles, int n, const uint64_t *masks,
                            const uint64_t *values, int any, uint64_t *stepped) {
    Sim *s = static_cast<Sim *>(h);
    *stepped = 0;
    if (s->failed) return VSIM_FAILED;
    for (uint64_t c = 1; c <= max_cycles; c++) {
        uint64_t flags = s->edge();
        *stepped = c;
        if (s->failed) return VSIM_FAILED;
        bool hit = !any;
        for (int i = 0; i < n; i++) {
            bool ok = (flags & masks[i]) == values[i];
            if (any && ok) { hit = true; break; }
            if (!any && !ok) { hit = false; break; }
        }
        if (hit) return VSIM_OK;
    }
    return VSIM_TIMEOUT;
}

static int lite_transaction(Sim *s, uint64_t timeout, uint64_t *stepped) {
    s->lite.done = false;
    s->lite.pending = true;
    *stepped = 0;
    for (uint64_t n = 1; n <= timeout; n++) {
        s->edge();
        *stepped = n;
        if (s->failed) return VSIM_FAILED;
        if (s->lite.done) return VSIM_OK;
    }
    s->lite.abort = true;
    return VSIM_TIMEOUT;
}

VSIM_API int vsim_write_reg(void *h, uint64_t addr, uint64_t data, uint64_t strb,
                            uint64_t timeout, unsigned *resp, uint64_t *stepped) {
    Sim *s = static_cast<Sim *>(h);
    if (s->failed) return VSIM_FAILED;
    s->lite.is_write = true;
    s->lite.addr = addr;
    s->lite.data = data;
    s->lite.strb = strb;
    int rc = lite_transaction(s, timeout, stepped);
    *resp = s->lite.resp;
    return rc;
}

VSIM_API int vsim_read_reg(void *h, uint64_t addr, uint64_t timeout, uint64_t *data,
                           unsigned *resp, uint64_t *stepped) {
    Sim *s = static_cast<Sim *>(h);
    if (s->failed) return VSIM_FAILED;
    s->lite.is_write = false;
    s->lite.addr = addr;
    int rc = lite_transaction(s, timeout, stepped);
    *data = s->lite.rdata;
    *resp = s->lite.resp;
    return rc;
}

VSIM_API int vsim_reset(void *h, uint64_t n) {
    Sim *s = static_cast<Sim *>(h);
    if (s->failed) return VSIM_FAILED;
    s->lite.abort = true;
    s->rst_left = n;
    return vsim_step(h, n + 1);
}

// DDRStats of port `port`: cycles, busy_cycles, read_bytes, write_bytes, read_bursts,
// write_bursts.
VSIM_API void vsim_stats(void *h, int port, uint64_t *out) {
    const DDRPort &d = static_cast<Sim *>(h)->ddr[port];
    out[0] = d.st_cycles;
    out[1] = d.st_busy;
    out[2] = d.st_rbytes;
    out[3] = d.st_wbytes;
    out[4] = d.st_rbursts;
    out[5] = d.st_wbursts;
}

VSIM_API void vsim_record(void *h, int enable) { static_cast<Sim *>(h)->recording = enable; }

VSIM_API uint64_t vsim_record_size(void *h) { return static_cast<Sim *>(h)->record.size(); }

VSIM_API void vsim_record_take(void *h, uint32_t *dst) {
    Sim *s = static_cast<Sim *>(h);
    std::memcpy(dst, s->record.data(), s->record.size() * sizeof(uint32_t));
    s->record.clear();
}
