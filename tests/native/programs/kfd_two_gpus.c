/* A kfd_like program: /dev/kfd, the GPUs from the process apertures, ACQUIRE_VM
 * with each GPU's accel node fd, memory allocated and mapped on both GPUs (the
 * id array is a pointer into this process), VRAM mapped by the CPU, USERPTR.
 * argv: gpu_id:node pairs (what a thunk reads from the topology in sysfs). */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <unistd.h>
#include "kfd_like.h"

int main(int argc, char **argv)
{
	int kfd = open("/dev/kfd", O_RDWR | O_CLOEXEC);
	struct kfd_ioctl_get_version_args ver = {0};
	struct kfd_ioctl_get_process_apertures_new_args ap = {0};
	struct kfd_process_device_apertures apertures[8];
	struct kfd_ioctl_alloc_memory_of_gpu_args al;
	struct kfd_ioctl_map_memory_to_gpu_args mp;
	uint32_t ids[2];
	int accel[2], i, r;
	unsigned char *cpu, *user;

	if (kfd < 0 || argc != 3)
		return 2;
	r = ioctl(kfd, DRM_IOCTL_KFD_GET_VERSION, &ver);
	printf("version=%d %u.%u\n", r, ver.major_version, ver.minor_version);
	r = ioctl(kfd, DRM_IOCTL_KFD_GET_PROCESS_APERTURES_NEW, &ap);
	printf("nodes=%d %u\n", r, ap.num_of_nodes);
	ap.kfd_process_device_apertures_ptr = (uint64_t)(uintptr_t)apertures;
	r = ioctl(kfd, DRM_IOCTL_KFD_GET_PROCESS_APERTURES_NEW, &ap);
	printf("apertures=%d", r);
	for (i = 0; i < (int)ap.num_of_nodes; i++)
		printf(" %u", apertures[i].gpu_id);
	printf("\n");

	for (i = 0; i < 2; i++) {
		struct kfd_ioctl_acquire_vm_args vm;
		char *colon = strchr(argv[i + 1], ':');
		ids[i] = (uint32_t)strtoul(argv[i + 1], NULL, 0);
		accel[i] = open(colon + 1, O_RDWR | O_CLOEXEC);
		vm.drm_fd = accel[i]; /* this process's descriptor number */
		vm.gpu_id = ids[i];
		r = ioctl(kfd, DRM_IOCTL_KFD_ACQUIRE_VM, &vm);
		printf("acquire_vm%d=%d %s\n", i, r, r ? strerrorname_np(errno) : "ok");
	}
	{
		struct kfd_ioctl_acquire_vm_args vm = {.drm_fd = 999, .gpu_id = ids[0]};
		r = ioctl(kfd, DRM_IOCTL_KFD_ACQUIRE_VM, &vm);
		printf("acquire_vm_bad_fd=%d %s\n", r, strerrorname_np(errno));
	}

	/* GTT memory of GPU 0, mapped on both GPUs. */
	memset(&al, 0, sizeof(al));
	al.va_addr = 0x100000000;
	al.size = 4096;
	al.gpu_id = ids[0];
	al.flags = KFD_IOC_ALLOC_MEM_FLAGS_GTT | KFD_IOC_ALLOC_MEM_FLAGS_WRITABLE;
	r = ioctl(kfd, DRM_IOCTL_KFD_ALLOC_MEMORY_OF_GPU, &al);
	printf("alloc_gtt=%d\n", r);
	memset(&mp, 0, sizeof(mp));
	mp.handle = al.handle;
	mp.device_ids_array_ptr = (uint64_t)(uintptr_t)ids;
	mp.n_devices = 2;
	r = ioctl(kfd, DRM_IOCTL_KFD_MAP_MEMORY_TO_GPU, &mp);
	printf("map_two=%d n_success=%u\n", r, mp.n_success);

	/* VRAM of GPU 1, mapped by the CPU through its accel node. */
	memset(&al, 0, sizeof(al));
	al.va_addr = 0x200000000;
	al.size = 4096;
	al.gpu_id = ids[1];
	al.flags = KFD_IOC_ALLOC_MEM_FLAGS_VRAM | KFD_IOC_ALLOC_MEM_FLAGS_WRITABLE |
		   KFD_IOC_ALLOC_MEM_FLAGS_PUBLIC;
	r = ioctl(kfd, DRM_IOCTL_KFD_ALLOC_MEMORY_OF_GPU, &al);
	printf("alloc_vram=%d\n", r);
	cpu = mmap(NULL, 4096, PROT_READ | PROT_WRITE, MAP_SHARED, accel[1], al.mmap_offset);
	printf("vram_mmap=%d\n", cpu == MAP_FAILED ? -errno : 0);
	if (cpu != MAP_FAILED) {
		memset(cpu, 0x5c, 4096);
		munmap(cpu, 4096);
	}

	/* USERPTR: shared memory of this process. */
	user = mmap(NULL, 4096, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
	memset(&al, 0, sizeof(al));
	al.va_addr = 0x300000000;
	al.size = 4096;
	al.gpu_id = ids[0];
	al.mmap_offset = (uint64_t)(uintptr_t)user;
	al.flags = KFD_IOC_ALLOC_MEM_FLAGS_USERPTR | KFD_IOC_ALLOC_MEM_FLAGS_WRITABLE;
	r = ioctl(kfd, DRM_IOCTL_KFD_ALLOC_MEMORY_OF_GPU, &al);
	printf("alloc_userptr=%d %s\n", r, r ? strerrorname_np(errno) : "ok");

	close(accel[0]);
	close(accel[1]);
	return close(kfd) == 0 ? 0 : 3;
}
