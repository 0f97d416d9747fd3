"""The memory a guest's kernel needs: what its balloon driver cannot give away.

Classic XenLinux clamps every target at minimum_target() (drivers/xen/balloon/balloon.c,
balloon_set_new_target(): `target_pages = max(target, minimum_target())`; later trees call it
balloon_minimum_target()), a continuous piecewise-linear function of the guest's maximum
memory (max_pfn):

    max_pfn < 128 MiB:   8 MiB + max_pfn / 2     (16 MiB -> 16, 32 -> 24)
    max_pfn < 512 MiB:  40 MiB + max_pfn / 4     (128 -> 72)
    max_pfn < 2 GiB:   104 MiB + max_pfn / 8     (512 -> 168)
    otherwise:         296 MiB + max_pfn / 32    (2048 -> 360, 8192 -> 552)

and "Don't enforce growth": never above current_target(). Mainline has no such function; its
GFP_BALLOON allocations carry __GFP_NORETRY and simply fail when the guest has nothing left to
give. ballonet models both with one figure, this function of the boot maxmem by default (the
estimate of what a kernel of that size keeps): the pre-patch driver clamps its target to it,
every driver fails to take pages below it (GuestMemory, as it does the workload).

Why the boot maxmem is max_pfn: a PV guest's memory map reaches its maxmem at boot. Mainline's
xen_memory_setup() (arch/x86/xen/setup.c) adds "extra" pages past the initial ones up to
xen_get_max_pages(), i.e. XENMEM_maximum_reservation (the domain's maxmem), capped at
EXTRA_MEM_RATIO (10) times the initial size, and max_pfn is the end of that map. Classic XenLinux
took max_pfn from start_info's nr_pages (the boot memory) unless the guest booted with `mem=`;
a guest booted with mem= its maxmem, as toolstacks set up for ballooning up, is the same figure.
The 10x cap is not modelled: a guest whose maxmem is over ten times its memory gets the floor of
its maxmem, slightly higher than Linux's.
"""

from __future__ import annotations

MIB_PAGES = 256  # 4 KiB pages in a MiB


def minimum_target_pages(max_pages: int) -> int:
    """classic XenLinux minimum_target() before its `min(.., current_target())`, in pages."""
    if max_pages < 128 * MIB_PAGES:
        return 8 * MIB_PAGES + (max_pages >> 1)
    if max_pages < 512 * MIB_PAGES:
        return 40 * MIB_PAGES + (max_pages >> 2)
    if max_pages < 2048 * MIB_PAGES:
        return 104 * MIB_PAGES + (max_pages >> 3)
    return 296 * MIB_PAGES + (max_pages >> 5)
