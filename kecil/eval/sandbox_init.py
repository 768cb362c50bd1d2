"""The eval sandbox's first process: builds the program's private file system, starts the program
as `nobody` with its limits, waits for it and then ends everything it left behind.

It runs as `python -I -B -S -c <this file's text> CONFIG`, standard library only, either inside
fresh namespaces made by util-linux `unshare` (PID, mount, network, IPC, UTS; as PID 1, so when it
exits the kernel kills every process left in the namespace) or, where those cannot be made, as a
plain child that is a "subreaper": orphans of the program become its children, so it can find
and kill them all. It tells the parent what it did as JSON lines on the status descriptor.
"""

import ctypes
import json
import os
import resource
import signal
import sys

MS_RDONLY, MS_NOSUID, MS_NODEV, MS_NOEXEC, MS_REMOUNT = 1, 2, 4, 8, 32
MS_NOATIME, MS_NODIRATIME, MS_BIND, MS_REC, MS_PRIVATE, MS_RELATIME = 1024, 2048, 4096, 16384, 1 << 18, 1 << 21
MNT_DETACH = 2
PR_SET_CHILD_SUBREAPER = 36
PIVOT_ROOT = {"x86_64": 155, "aarch64": 41, "riscv64": 41, "ppc64le": 203, "s390x": 217}
NOBODY = 65534

config = json.loads(sys.argv[1])
status_fd = config["status_fd"]
libc = ctypes.CDLL(None, use_errno=True)


def tell(**fields):
    os.write(status_fd, (json.dumps(fields) + "\n").encode())


def check(result, what):
    if result != 0:
        errno = ctypes.get_errno()
        raise OSError(errno, f"{what}: {os.strerror(errno)}")


def mount(source, target, fstype, flags, data=None):
    encode = lambda s: s.encode() if s is not None else None  # noqa: E731
    check(libc.mount(encode(source), encode(target), encode(fstype), ctypes.c_ulong(flags), encode(data)), f"mount {target}")


def bind_read_only(source, target):
    """Bind `source` at `target` read-only, keeping the flags the kernel locks (nosuid, nodev...)."""
    if os.path.isdir(source):
        os.makedirs(target, exist_ok=True)
    else:
        os.makedirs(os.path.dirname(target), exist_ok=True)
        open(target, "a").close()
    mount(source, target, None, MS_BIND | MS_REC)
    held = os.statvfs(source).f_flag
    kept = sum(ms for st, ms in ((os.ST_NOSUID, MS_NOSUID), (os.ST_NODEV, MS_NODEV), (os.ST_NOEXEC, MS_NOEXEC),
                                 (os.ST_NOATIME, MS_NOATIME), (os.ST_NODIRATIME, MS_NODIRATIME), (4096, MS_RELATIME)) if held & st)
    mount(None, target, None, MS_REMOUNT | MS_BIND | MS_RDONLY | kept)


def private_root():
    """Make a tmpfs the root: the system's programs and libraries read-only, empty /tmp, /var/tmp,
    /dev/shm and the program's own folder; nothing else of the host (homes, /run, kecil's data,
    other users' files and sockets) exists in it. Returns the program's path inside it."""
    root = config["root"]
    mount(None, "/", None, MS_REC | MS_PRIVATE)  # nothing mounted here propagates to the host
    mount("tmpfs", root, "tmpfs", MS_NOSUID | MS_NODEV, f"size={config['tmpfs_mb']}m,mode=755")
    done = []
    for source in config["read_only"]:
        if not os.path.lexists(source) or any(source == d or source.startswith(d + "/") for d in done):
            continue
        target = root + source
        if os.path.islink(source):  # /bin -> usr/bin on merged-/usr systems: the same link
            os.makedirs(os.path.dirname(target), exist_ok=True)
            os.symlink(os.readlink(source), target)
            continue
        bind_read_only(source, target)
        done.append(source)
    for device in ("null", "zero", "full", "random", "urandom"):
        bind_read_only(f"/dev/{device}", f"{root}/dev/{device}")
    for name, target in (("fd", "/proc/self/fd"), ("stdin", "/proc/self/fd/0"), ("stdout", "/proc/self/fd/1"), ("stderr", "/proc/self/fd/2")):
        os.symlink(target, f"{root}/dev/{name}")
    for folder in ("/tmp", "/var/tmp", "/dev/shm"):
        os.makedirs(root + folder, exist_ok=True)
        os.chmod(root + folder, 0o1777)
    os.makedirs(root + "/proc")
    try:  # a /proc of this PID namespace only; some containers refuse it, and Python runs without
        mount("proc", root + "/proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC)
    except OSError:
        pass
    os.makedirs(root + "/sandbox", mode=0o700)
    with open(config["program"], "rb") as source, open(root + "/sandbox/program.py", "wb") as target:
        target.write(source.read())
    if config["drop"]:
        os.chown(root + "/sandbox", NOBODY, NOBODY)
        os.chown(root + "/sandbox/program.py", NOBODY, NOBODY)
    os.chdir(root)
    number = PIVOT_ROOT.get(os.uname().machine)
    if number is None:
        raise OSError(0, f"no pivot_root for {os.uname().machine}")
    check(libc.syscall(number, b".", b"."), "pivot_root")  # the old root ends up under the new one...
    check(libc.umount2(b".", MNT_DETACH), "detaching the host's file system")  # ...and is let go
    os.chdir("/")
    return "/sandbox/program.py"


def descendants():
    """This process's descendants, from /proc (orphans are our children: we are their reaper)."""
    children = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat", "rb") as handle:
                    parent = int(handle.read().rsplit(b")", 1)[1].split()[1])
            except (OSError, ValueError, IndexError):
                continue
            children.setdefault(parent, []).append(int(entry))
    found, todo = [], [os.getpid()]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def end_the_rest():
    """Kill whatever the program left running, then reap it (bounded: a few rounds)."""
    for _ in range(20):
        # PID 1 of a namespace: -1 is everyone in it but us (never used outside one: that is the host)
        for pid in [-1] if os.getpid() == 1 else descendants():
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass
        try:
            while os.waitpid(-1, os.WNOHANG)[0]:
                pass
        except ChildProcessError:
            return


def start_program(program):
    limits = config["limits"]
    pid = os.fork()
    if pid:
        return pid
    try:
        os.close(status_fd)
        os.setsid()  # its own session: no terminal to write to or signal through
        os.chdir(os.path.dirname(program))
        memory = limits["memory_mb"] * 2**20
        resource.setrlimit(resource.RLIMIT_AS, (memory, memory))  # one process's own MemoryError
        cpu = limits["cpu_seconds"]
        resource.setrlimit(resource.RLIMIT_CPU, (cpu, cpu + 1))
        size = limits["file_size_mb"] * 2**20
        resource.setrlimit(resource.RLIMIT_FSIZE, (size, size))
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
        if config["drop"]:
            # RLIMIT_NPROC counts every process of the user and root ignores it, so it only means
            # something once we are `nobody`; the cgroup's pids.max is the real bound when there is one.
            resource.setrlimit(resource.RLIMIT_NPROC, (limits["processes"], limits["processes"]))
            os.setgroups([])
            os.setgid(NOBODY)
            os.setuid(NOBODY)
        home = os.path.dirname(program)
        env = {"PATH": "/usr/bin:/bin", "HOME": home, "TMPDIR": config["tmp"] or home, "LANG": "C.UTF-8", "PYTHONDONTWRITEBYTECODE": "1"}
        os.execve(config["interpreter"], [config["interpreter"], "-I", "-B", program], env)
    except BaseException as exc:  # noqa: BLE001 - whatever went wrong, say it and never return into the supervisor
        os.write(2, f"kecil sandbox: could not start the program: {exc}\n".encode())
    os._exit(127)


def main():
    libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)
    isolation = []
    if config["namespaces"]:
        isolation += ["pid", "network"]
        try:
            program = private_root()
            isolation.append("mount")
        except OSError as exc:
            tell(error=f"private file system: {exc}")
            raise SystemExit(1)
    else:
        program = config["program"]
        flags = 0x40000000 if os.geteuid() == 0 else 0x10000000 | 0x40000000  # CLONE_NEWNET (| CLONE_NEWUSER)
        if libc.unshare(flags) == 0:  # the old sandbox's one namespace, tried even here
            isolation.append("network")
    if config["drop"]:
        isolation.append("nobody")
    pid = start_program(program)
    tell(ready=True, isolation=isolation)
    while True:
        try:
            done, code = os.waitpid(-1, 0)
        except ChildProcessError:
            code = None
            break
        except InterruptedError:
            continue
        if done == pid:
            break
    end_the_rest()
    tell(exit=os.waitstatus_to_exitcode(code) if code is not None else None)


main()
