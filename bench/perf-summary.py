#!/usr/bin/env python3
"""Summarise `perf script` output of a backupmx CPU profile (bench/run.sh PROFILE=1).

Usage: perf script -i perf.data > perf.txt && bench/perf-summary.py perf.txt

Prints where the samples go: by the outermost backupmx activity (reception,
the store's writer goroutine, the scheduler), SQLite time by the store function
that asked for it (and how much of it is parsing SQL text), and a few kernel and
runtime costs. Shares are of all samples of the process.
"""
import collections, sys, re
samples=[]; cur=None
for line in open(sys.argv[1]):
    if not line.strip():
        if cur is not None: samples.append(cur); cur=None
        continue
    if not line.startswith('\t') and not line.startswith(' '):
        cur=[]; continue
    parts=line.strip().split(' ',1)
    if len(parts)==2 and cur is not None:
        f=re.sub(r'\+0x[0-9a-f]+ \(.*\)$','',parts[1]); cur.append(f)
if cur: samples.append(cur)
N=len(samples); print("samples",N)
def first_bmx(st):
    for f in st:
        if f.startswith('backupmx/') and 'ctxQuerier' not in f: return f
    return '(none)'
def top(st):
    for f in reversed(st):
        if 'smtpd.(*session).Data' in f: return 'smtpd Data → Enqueue (body write + fsync + wait)'
    for f in reversed(st):
        if 'writer).run' in f: return 'store writer goroutine (dir fsync, SQLite)'
        if 'internal/relay.' in f: return 'relay: SMTP sessions to the primary'
        if 'queue.(*cycle)' in f: return 'queue delivery cycle (outside relay)'
        if 'internal/queue.' in f: return 'queue scheduler loop (claim/defer/probe)'
        if 'go-smtp' in f: return 'go-smtp conn, outside DATA'
        if 'internal/admin' in f: return 'admin API'
    for f in st:
        if 'gcBgMarkWorker' in f: return 'GC background'
    return 'other: '+(st[-1] if st else 'empty')
c=collections.Counter(top(s) for s in samples)
for k,v in c.most_common(12): print(f"{100*v/N:5.1f}% {k}")
def share(pred): return 100*sum(1 for s in samples if pred(s))/N
print('--- sqlite total %.1f%%, of which statement prepare (parse SQL) %.1f%%' % (share(lambda s: any('modernc.org/sqlite' in f for f in s)), share(lambda s: any('_sqlite3Prepare' in f for f in s))))
c2=collections.Counter(first_bmx(s) for s in samples if any('_sqlite3Prepare' in f for f in s))
for k,v in c2.most_common(8): print(f"   prepare {100*v/N:5.1f}% {k}")
c3=collections.Counter(first_bmx(s) for s in samples if any('modernc.org/sqlite' in f for f in s))
for k,v in c3.most_common(10): print(f"   sqlite {100*v/N:5.1f}% {k}")
for name,pat in [('kernel fsync','do_fsync'),('GC mark','gcBgMarkWorker'),('mallocgc','mallocgc'),('go-smtp dataReader','go-smtp.(*dataReader).Read'),('kernel write','vfs_write'),('openat','do_sys_openat2'),('link','do_linkat'),('unlink','do_unlinkat'),('copystack','copystack'),('net read','tcp_recvmsg'),('net write','tcp_sendmsg'),('json','encoding/json')]:
    print(f"{name:20s} {share(lambda s: any(pat in f for f in s)):5.1f}%")
