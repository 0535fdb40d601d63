import { execFileSync } from 'node:child_process';
import { readFileSync } from 'node:fs';
import os from 'node:os';

export interface MachineDescription {
  cpu: string;
  cores: number;
  memoryGiB: number;
  virtualised: boolean;
  kernel: string;
  os: string;
  node: string;
  /** 1-minute load average when the run started and ended: the noise a reader should know about. */
  loadAtStart: number;
  loadAtEnd?: number;
}

function readText(path: string): string {
  try {
    return readFileSync(path, 'utf8');
  } catch {
    return '';
  }
}

export function describeMachine(): MachineDescription {
  const cpuinfo = readText('/proc/cpuinfo');
  const model = /^model name\s*:\s*(.+)$/m.exec(cpuinfo)?.[1]?.trim() ?? os.cpus()[0]?.model ?? 'unknown';
  const mhz = /^cpu MHz\s*:\s*([\d.]+)$/m.exec(cpuinfo)?.[1];
  const release = /^PRETTY_NAME="?([^"\n]+)"?$/m.exec(readText('/etc/os-release'))?.[1] ?? os.type();
  return {
    cpu: mhz ? `${model} @ ${Math.round(Number(mhz))} MHz` : model,
    cores: os.availableParallelism(),
    memoryGiB: Math.round(os.totalmem() / 2 ** 30),
    virtualised: /^flags\s*:.*\bhypervisor\b/m.test(cpuinfo),
    kernel: `${os.type()} ${os.release()} ${os.arch()}`,
    os: release,
    node: process.version,
    loadAtStart: os.loadavg()[0],
  };
}

/** The commit measured, and whether the source differed from it (benchmarks of uncommitted code). */
export function describeCommit(root: string): string {
  try {
    const sha = execFileSync('git', ['rev-parse', '--short=12', 'HEAD'], { cwd: root, encoding: 'utf8' }).trim();
    const dirty = execFileSync('git', ['status', '--porcelain', '--', 'src', 'machines', 'bench'], {
      cwd: root,
      encoding: 'utf8',
    }).trim();
    return dirty ? `${sha} + uncommitted changes in src/, machines/ or bench/` : sha;
  } catch {
    return 'unknown (not a git checkout)';
  }
}
