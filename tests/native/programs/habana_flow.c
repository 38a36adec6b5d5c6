/* A habana_like program, compiled against habana_like.h: device memory, a
 * USERPTR host buffer, a command buffer mmap'ed and filled, a CS and its wait.
 * The CS fills device memory with a byte and DMAs it into the host buffer,
 * which this process then reads. */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <unistd.h>
#include "habana_like.h"

#define SIZE 8192

static int mem(int fd, union hlk_mem_args *a)
{
	return ioctl(fd, DRM_IOCTL_HLK_MEMORY, a);
}

static uint32_t ctl(uint32_t opcode, uint32_t extra)
{
	return ((opcode << HLK_CTL_OPCODE_SHIFT) & HLK_CTL_OPCODE_MASK) | (extra & ~HLK_CTL_OPCODE_MASK);
}

int main(void)
{
	int fd = open("/dev/accel/accel0", O_RDWR | O_CLOEXEC);
	union hlk_mem_args m;
	union hlk_cb_args cb;
	union hlk_cs_args cs;
	union hlk_wait_cs_args wait;
	struct hlk_cs_chunk chunk;
	struct hlk_packet_lin_dma *pkt;
	uint64_t handle, dram_va, host_va;
	unsigned char *host, *cbmap;
	int i, good;

	if (fd < 0)
		return 2;
	memset(&m, 0, sizeof(m));
	m.input.op = HLK_MEM_OP_ALLOC;
	m.input.args.alloc.mem_size = SIZE;
	printf("alloc=%d\n", mem(fd, &m));
	handle = m.output.handle;

	memset(&m, 0, sizeof(m));
	m.input.op = HLK_MEM_OP_MAP;
	m.input.args.map_device.handle = handle;
	printf("map_device=%d\n", mem(fd, &m));
	dram_va = m.output.device_virt_addr;

	/* USERPTR: this process's memory, pinned by the device. */
	host = mmap(NULL, SIZE, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
	memset(host, 0x11, SIZE);
	memset(&m, 0, sizeof(m));
	m.input.op = HLK_MEM_OP_MAP;
	m.input.flags = HLK_MEM_USERPTR;
	m.input.args.map_host.host_virt_addr = (uint64_t)(uintptr_t)host;
	m.input.args.map_host.mem_size = SIZE;
	printf("map_host=%d\n", mem(fd, &m));
	host_va = m.output.device_virt_addr;

	/* Private memory (the stack) cannot be pinned: EFAULT. */
	{
		char stackbuf[64];
		memset(&m, 0, sizeof(m));
		m.input.op = HLK_MEM_OP_MAP;
		m.input.flags = HLK_MEM_USERPTR;
		m.input.args.map_host.host_virt_addr = (uint64_t)(uintptr_t)stackbuf;
		m.input.args.map_host.mem_size = sizeof(stackbuf);
		i = mem(fd, &m);
		printf("map_private=%d errno=%s\n", i, strerrorname_np(errno));
	}

	memset(&cb, 0, sizeof(cb));
	cb.input.op = HLK_CB_OP_CREATE;
	cb.input.cb_size = 4096;
	printf("cb_create=%d\n", ioctl(fd, DRM_IOCTL_HLK_CB, &cb));
	cbmap = mmap(NULL, cb.output.size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, cb.output.mmap_offset);
	printf("cb_mmap=%d\n", cbmap == MAP_FAILED ? -1 : 0);
	if (cbmap == MAP_FAILED)
		return 3;
	pkt = (struct hlk_packet_lin_dma *)cbmap;
	pkt[0].tsize = SIZE; /* memset device memory to 0xab */
	pkt[0].ctl = ctl(HLK_PACKET_LIN_DMA, HLK_LIN_DMA_CTL_MEMSET |
			 (HLK_DMA_DRAM_TO_DRAM << HLK_LIN_DMA_DIR_SHIFT));
	pkt[0].src_addr = 0xab;
	pkt[0].dst_addr = dram_va;
	pkt[1].tsize = SIZE; /* and copy it to the host buffer */
	pkt[1].ctl = ctl(HLK_PACKET_LIN_DMA, HLK_DMA_DRAM_TO_HOST << HLK_LIN_DMA_DIR_SHIFT);
	pkt[1].src_addr = dram_va;
	pkt[1].dst_addr = host_va;

	memset(&chunk, 0, sizeof(chunk));
	chunk.cb_handle = cb.output.cb_handle;
	chunk.queue_index = HLK_QUEUE_ID_DMA_0;
	chunk.cb_size = 2 * sizeof(*pkt);
	memset(&cs, 0, sizeof(cs));
	cs.input.chunks_execute = (uint64_t)(uintptr_t)&chunk; /* a pointer to our stack */
	cs.input.num_chunks_execute = 1;
	printf("cs=%d\n", ioctl(fd, DRM_IOCTL_HLK_CS, &cs));
	printf("seq_nonzero=%d\n", cs.output.seq != 0);

	memset(&wait, 0, sizeof(wait));
	wait.input.seq = cs.output.seq;
	wait.input.timeout_us = 10000000;
	printf("wait=%d\n", ioctl(fd, DRM_IOCTL_HLK_WAIT_CS, &wait));
	printf("wait_status=%u\n", wait.output.status);
	for (good = 1, i = 0; i < SIZE; i++)
		good &= host[i] == 0xab;
	printf("host_filled=%d\n", good);

	printf("cb_munmap=%d\n", munmap(cbmap, cb.output.size));
	memset(&m, 0, sizeof(m));
	m.input.op = HLK_MEM_OP_UNMAP;
	m.input.args.unmap.device_virt_addr = host_va;
	printf("unmap_host=%d\n", mem(fd, &m));
	printf("host_munmap=%d\n", munmap(host, SIZE));
	return close(fd) == 0 ? 0 : 4;
}
