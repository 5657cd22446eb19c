#!/usr/bin/env python3
"""The desktop side of benchmarks/stream.py: draws the wall-clock time as big blocks.

Runs on the node, on the desktop's X display (DISPLAY and XAUTHORITY in the environment),
with nothing but the Python standard library and libX11 (through ctypes), so it works with
any Python on the node and on any X server (Xorg, Xvfb, TigerVNC's Xvnc).

Every frame it takes ``time.time()`` and draws, at the top-left of the screen:
  row 0: a white block, then the time's low 24 bits in milliseconds, one block per bit (MSB
         first, white = 1), then a black block;
  row 1: the same blocks with every colour inverted.
Blocks are ``--block`` pixels square (32 by default): large and black/white, so they survive
H.264, JPEG and VNC's lossy encodings; the inverted row lets the reader reject a frame that
is torn or smeared between two codes. With ``--motion`` the rest of the screen is a
photo-like texture (colour waves and noise) that pans every frame, so every pixel changes and
no encoder gets it for free; otherwise only the code rows change (a static desktop with a
clock).

The code is the time at which the frame was drawn; the reader in the browser subtracts it
from its own ``Date.now()``: both are this machine's CLOCK_REALTIME (stream.py checks that the
node and the browser share one time namespace).
"""

from __future__ import annotations

import argparse
import ctypes
import ctypes.util
import math
import random
import signal
import sys
import time

BITS = 24
CW_BACK_PIXEL = 1 << 1
CW_OVERRIDE_REDIRECT = 1 << 9


class XSetWindowAttributes(ctypes.Structure):
    _fields_ = [
        ("background_pixmap", ctypes.c_ulong), ("background_pixel", ctypes.c_ulong),
        ("border_pixmap", ctypes.c_ulong), ("border_pixel", ctypes.c_ulong),
        ("bit_gravity", ctypes.c_int), ("win_gravity", ctypes.c_int),
        ("backing_store", ctypes.c_int), ("backing_planes", ctypes.c_ulong),
        ("backing_pixel", ctypes.c_ulong), ("save_under", ctypes.c_int),
        ("event_mask", ctypes.c_long), ("do_not_propagate_mask", ctypes.c_long),
        ("override_redirect", ctypes.c_int), ("colormap", ctypes.c_ulong),
        ("cursor", ctypes.c_ulong),
    ]


def load_x11() -> ctypes.CDLL:
    name = ctypes.util.find_library("X11") or "libX11.so.6"
    x = ctypes.CDLL(name)
    x.XOpenDisplay.restype = ctypes.c_void_p
    x.XOpenDisplay.argtypes = [ctypes.c_char_p]
    x.XDefaultScreen.argtypes = [ctypes.c_void_p]
    x.XRootWindow.restype = ctypes.c_ulong
    x.XRootWindow.argtypes = [ctypes.c_void_p, ctypes.c_int]
    x.XDisplayWidth.argtypes = x.XDisplayHeight.argtypes = [ctypes.c_void_p, ctypes.c_int]
    x.XCreateWindow.restype = ctypes.c_ulong
    x.XCreateWindow.argtypes = [
        ctypes.c_void_p, ctypes.c_ulong, ctypes.c_int, ctypes.c_int, ctypes.c_uint,
        ctypes.c_uint, ctypes.c_uint, ctypes.c_int, ctypes.c_uint, ctypes.c_void_p,
        ctypes.c_ulong, ctypes.POINTER(XSetWindowAttributes)]
    x.XMapRaised.argtypes = [ctypes.c_void_p, ctypes.c_ulong]
    x.XCreateGC.restype = ctypes.c_void_p
    x.XCreateGC.argtypes = [ctypes.c_void_p, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_void_p]
    x.XSetForeground.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_ulong]
    x.XFillRectangle.argtypes = [ctypes.c_void_p, ctypes.c_ulong, ctypes.c_void_p, ctypes.c_int,
                                 ctypes.c_int, ctypes.c_uint, ctypes.c_uint]
    x.XSync.argtypes = [ctypes.c_void_p, ctypes.c_int]
    x.XDefaultVisual.restype = ctypes.c_void_p
    x.XDefaultVisual.argtypes = x.XDefaultDepth.argtypes = [ctypes.c_void_p, ctypes.c_int]
    x.XCreatePixmap.restype = ctypes.c_ulong
    x.XCreatePixmap.argtypes = [ctypes.c_void_p, ctypes.c_ulong, ctypes.c_uint, ctypes.c_uint,
                                ctypes.c_uint]
    x.XCreateImage.restype = ctypes.c_void_p
    x.XCreateImage.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_uint, ctypes.c_int,
                               ctypes.c_int, ctypes.c_char_p, ctypes.c_uint, ctypes.c_uint,
                               ctypes.c_int, ctypes.c_int]
    x.XPutImage.argtypes = [ctypes.c_void_p, ctypes.c_ulong, ctypes.c_void_p, ctypes.c_void_p,
                            ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_int,
                            ctypes.c_uint, ctypes.c_uint]
    x.XCopyArea.argtypes = [ctypes.c_void_p, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_void_p,
                            ctypes.c_int, ctypes.c_int, ctypes.c_uint, ctypes.c_uint,
                            ctypes.c_int, ctypes.c_int]
    return x


def texture_tile(size: int) -> bytes:
    """A photo-like tile (smooth colour waves plus noise), 32-bit BGRX: costly to code for
    every encoder, unlike flat rectangles, which VNC's encodings send almost for free."""
    rnd = random.Random(14)
    out = bytearray(size * size * 4)
    for y in range(size):
        cy = math.cos(y * math.tau / size * 2)
        for xx in range(size):
            sx = math.sin(xx * math.tau / size * 3)
            o = (y * size + xx) * 4
            n = rnd.randint(-24, 24)
            out[o] = max(0, min(255, int(128 + 90 * sx * cy) + n))
            out[o + 1] = max(0, min(255, int(128 + 90 * math.sin((xx + y) * 0.05)) + n))
            out[o + 2] = max(0, min(255, int(128 + 90 * cy) + n))
    return bytes(out)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    ap.add_argument("--motion", action="store_true", help="animate the whole screen")
    ap.add_argument("--fps", type=float, default=60.0)
    ap.add_argument("--block", type=int, default=32, help="code block size in pixels")
    args = ap.parse_args()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))

    x = load_x11()
    dpy = x.XOpenDisplay(None)
    if not dpy:
        print("stream_clock: cannot open the X display (DISPLAY, XAUTHORITY?)", file=sys.stderr)
        return 1
    scr = x.XDefaultScreen(dpy)
    root = x.XRootWindow(dpy, scr)
    width, height = x.XDisplayWidth(dpy, scr), x.XDisplayHeight(dpy, scr)
    b = args.block
    code_w, code_h = (BITS + 2) * b, 2 * b
    win_w, win_h = (width, height) if args.motion else (code_w, code_h)
    attrs = XSetWindowAttributes(background_pixel=0, override_redirect=1)
    win = x.XCreateWindow(dpy, root, 0, 0, win_w, win_h, 0, 0, 1, None,
                          CW_BACK_PIXEL | CW_OVERRIDE_REDIRECT, ctypes.byref(attrs))
    x.XMapRaised(dpy, win)
    gc = x.XCreateGC(dpy, win, 0, None)
    print(f"stream_clock: {width}x{height}, block {b}, motion {args.motion}", flush=True)

    # --motion: a textured picture that pans across the whole screen below the code rows,
    # 8 pixels a frame to the left and 4 down (a scrolled page, a panned image or video).
    tile = 256
    pix = 0
    if args.motion:
        depth = x.XDefaultDepth(dpy, scr)
        pix = x.XCreatePixmap(dpy, win, width + tile, height + tile, depth)
        data = texture_tile(tile)
        img = x.XCreateImage(dpy, x.XDefaultVisual(dpy, scr), depth, 2, 0, data, tile, tile,
                             32, tile * 4)
        for ty in range(0, height + tile, tile):
            for tx in range(0, width + tile, tile):
                x.XPutImage(dpy, pix, gc, img, 0, 0, tx, ty, tile, tile)
    period = 1.0 / args.fps
    frame = 0
    next_at = time.monotonic()
    while True:
        if args.motion:
            sx, sy = (frame * 8) % tile, (frame * 4) % tile
            x.XCopyArea(dpy, pix, win, gc, sx, sy, width, height - code_h, 0, code_h)
        now_ms = int(time.time() * 1000) & ((1 << BITS) - 1)
        bits = [1] + [(now_ms >> (BITS - 1 - i)) & 1 for i in range(BITS)] + [0]
        for row in (0, 1):
            for i, bit in enumerate(bits):
                on = bit ^ row
                x.XSetForeground(dpy, gc, 0xFFFFFF if on else 0x000000)
                x.XFillRectangle(dpy, win, gc, i * b, row * b, b, b)
        x.XSync(dpy, 0)
        frame += 1
        next_at += period
        delay = next_at - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        else:
            next_at = time.monotonic()


if __name__ == "__main__":
    sys.exit(main())
