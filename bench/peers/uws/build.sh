#!/usr/bin/env bash
# Builds the uWebSockets peer, placecast-uws, from uWebSockets and uSockets sources at the
# commits its figures were measured with. Not part of CI: benchmarks only.
#
#   bench/peers/uws/build.sh [SRC_DIR] [OUT_DIR]
#
# SRC_DIR is a uWebSockets tree with uSockets in SRC_DIR/uSockets (default: cloned into
# target/uws-src from GitHub at the pinned commits; a machine without GitHub access copies the
# two trees there by other means). OUT_DIR defaults to target/uws; the binary is
# OUT_DIR/placecast-uws. Plain epoll, no TLS, no compression, -O3 with LTO, as uWebSockets'
# own Makefile builds it.
set -euo pipefail
UWS_COMMIT=66dcff3dd48f0c19dd1703426365d062039321d0
USOCKETS_COMMIT=86097c490263ab662d62e8e7b541390bdec7d149
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../../.." && pwd)
src=${1:-$root/target/uws-src}
out=${2:-$root/target/uws}

if [ ! -f "$src/src/App.h" ]; then
    git clone -q https://github.com/uNetworking/uWebSockets "$src"
    git -C "$src" checkout -q "$UWS_COMMIT"
fi
if [ ! -f "$src/uSockets/src/libusockets.h" ]; then
    rm -rf "$src/uSockets"
    git clone -q https://github.com/uNetworking/uSockets "$src/uSockets"
    git -C "$src/uSockets" checkout -q "$USOCKETS_COMMIT"
fi

mkdir -p "$out/obj"
cflags=(-O3 -flto -DLIBUS_NO_SSL -I"$src/uSockets/src")
for c in "$src"/uSockets/src/*.c "$src"/uSockets/src/eventing/*.c "$src"/uSockets/src/crypto/*.c; do
    cc "${cflags[@]}" -c "$c" -o "$out/obj/$(basename "${c%.c}").o"
done
g++ -std=c++20 -O3 -flto -DLIBUS_NO_SSL -DUWS_NO_ZLIB -I"$src/src" -I"$src/uSockets/src" \
    "$here/placecast-uws.cpp" "$out"/obj/*.o -o "$out/placecast-uws"
echo "built $out/placecast-uws"
