/*
 * Forced into every C file of `make test-asan`'s build (-include), which
 * links with -Wl,--wrap=munmap: every munmap(2) call goes through
 * __wrap_munmap below.
 *
 * GCC's AddressSanitizer runtime intercepts mmap(2) but not munmap(2): a
 * range still poisoned when it is unmapped stays poisoned, and whatever is
 * mapped at that address later is reported on its first write.  CRuby
 * 3.4's GC poisons empty heap pages and unmaps them as they are, and a
 * later heap page or io_uring ring mapped at the same address was reported
 * as a use-after-poison.  Unmapped memory belongs to no one, so the shadow
 * of the range is cleared before it is unmapped.
 *
 * No system header here: this comes before each file's own config.h and
 * feature macros.  Assembler sources (coroutine/) are skipped.
 */
#if !defined(RUBY_URING_ASAN_MUNMAP_H) && !defined(__ASSEMBLER__)
#define RUBY_URING_ASAN_MUNMAP_H 1
#ifdef __cplusplus
extern "C" {
#endif
void __asan_unpoison_memory_region(void const volatile *addr, __SIZE_TYPE__ size);
int __real_munmap(void *addr, __SIZE_TYPE__ length);
int __wrap_munmap(void *addr, __SIZE_TYPE__ length);

__attribute__((weak)) int
__wrap_munmap(void *addr, __SIZE_TYPE__ length)
{
    __asan_unpoison_memory_region(addr, length);
    return __real_munmap(addr, length);
}
#ifdef __cplusplus
}
#endif
#endif
