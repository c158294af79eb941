/* lz4.h: the liblz4 block-format functions uvm calls, declared here because the
 * machine has liblz4.so.1 but not its headers. The build links it by soname. */
#ifndef UVM_LZ4_H
#define UVM_LZ4_H

int LZ4_sizeofState(void);
/* compresses with a caller's state (LZ4_compress_default keeps its 16 KiB on the stack) */
int LZ4_compress_fast_extState(void *state, const char *src, char *dst, int src_size,
                               int dst_capacity, int acceleration);
int LZ4_decompress_safe(const char *src, char *dst, int compressed_size, int dst_capacity);

#endif
