export async function main(_argv: string[]): Promise<number> {
  process.stderr.write('captrap revoke: not implemented yet\n');
  return 1;
}
