export async function main(_argv: string[]): Promise<number> {
  process.stderr.write('captrap caps: not implemented yet\n');
  return 1;
}
