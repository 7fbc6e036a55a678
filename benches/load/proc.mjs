// /proc helpers shared by bench.mjs and wsbench.mjs.

import * as fs from 'node:fs';

export function procTable() {
  const rows = [];
  for (const name of fs.readdirSync('/proc')) {
    if (!/^\d+$/.test(name)) continue;
    let stat;
    try { stat = fs.readFileSync(`/proc/${name}/stat`, 'utf8'); } catch { continue; }
    const f = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
    // f[0] is field 3 (state): field N is f[N - 3].
    rows.push({
      pid: Number(name), ppid: Number(f[1]),
      ticks: Number(f[11]) + Number(f[12]) + Number(f[13]) + Number(f[14]),
    });
  }
  return rows;
}

// utime+stime+cutime+cstime of a process and all its descendants (children
// that exit and are reaped move into their parent's cutime/cstime).
export function treeTicks(rows, root) {
  const kids = new Map();
  for (const r of rows) {
    if (!kids.has(r.ppid)) kids.set(r.ppid, []);
    kids.get(r.ppid).push(r);
  }
  const self = rows.find((r) => r.pid === root);
  if (!self) return NaN;
  let sum = 0;
  const stack = [self];
  while (stack.length) {
    const r = stack.pop();
    sum += r.ticks;
    for (const k of kids.get(r.pid) ?? []) stack.push(k);
  }
  return sum;
}

export function treePids(root) {
  const rows = procTable();
  const out = [];
  const stack = [root];
  while (stack.length) {
    const p = stack.pop();
    out.push(p);
    for (const r of rows) if (r.ppid === p) stack.push(r.pid);
  }
  return out;
}

// A /proc/PID/status field in kB (VmRSS, VmHWM, ...).
export function statusField(pid, field) {
  try {
    const m = new RegExp(`^${field}:\\s+(\\d+) kB`, 'm').exec(fs.readFileSync(`/proc/${pid}/status`, 'utf8'));
    return m ? Number(m[1]) : NaN;
  } catch { return NaN; }
}

export const median = (xs) => {
  const s = xs.filter((x) => Number.isFinite(x)).sort((a, b) => a - b);
  if (!s.length) return NaN;
  const m = Math.floor(s.length / 2);
  return s.length % 2 ? s[m] : (s[m - 1] + s[m]) / 2;
};

// CPU clock ticks of each named process tree, and the machine's idle/total.
export function sampleTrees(procs) {
  const rows = procTable();
  const out = {};
  for (const [name, pid] of Object.entries(procs)) out[name] = treeTicks(rows, pid);
  const all = fs.readFileSync('/proc/stat', 'utf8').split('\n')[0].trim().split(/\s+/).slice(1).map(Number);
  out._idle = all[3] + all[4];
  out._total = all.reduce((a, b) => a + b, 0);
  return out;
}

// Summed VmRSS/VmHWM (kB) over a process tree.
export function treeMemory(root) {
  const pids = treePids(root);
  return {
    processes: pids.length,
    rss_kb: pids.reduce((a, p) => a + (statusField(p, 'VmRSS') || 0), 0),
    hwm_kb: pids.reduce((a, p) => a + (statusField(p, 'VmHWM') || 0), 0),
  };
}
