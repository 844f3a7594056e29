# frozen_string_literal: false
require 'test/unit'

# IO::Buffer's counted locks (patch 0006): holders nest, a slice's lock
# holds its root, and a lock is released even when its block raises.
class TestIOBufferLocks < Test::Unit::TestCase
  def setup
    Warning[:experimental] = false
  end

  def assert_locked_out(buffer)
    assert_raise(IO::Buffer::LockedError) { buffer.free }
    assert_raise(IO::Buffer::LockedError) { buffer.resize(buffer.size * 2) }
    assert_raise(IO::Buffer::LockedError) { buffer.transfer }
  end

  def test_locked_nests
    buffer = IO::Buffer.new(16)
    result = buffer.locked do
      buffer.locked do
        assert_predicate buffer, :locked?
        assert_locked_out(buffer)
        :inner
      end.tap { assert_predicate buffer, :locked?, "the outer lock is still held" }
    end
    assert_equal :inner, result
    refute_predicate buffer, :locked?
    buffer.resize(32)
    assert_equal 32, buffer.size
  end

  def test_locked_releases_when_the_block_raises
    buffer = IO::Buffer.new(16)
    assert_raise(RuntimeError) { buffer.locked { raise "inside" } }
    refute_predicate buffer, :locked?
    buffer.free
    assert_predicate buffer, :null?
  end

  def test_slice_lock_holds_the_root
    root = IO::Buffer.new(64)
    slice = root.slice(8, 16)
    slice.locked do
      assert_predicate root, :locked?
      assert_match(/LOCKED/, root.inspect)
      assert_locked_out(root)
      root.slice(0, 8).locked { assert_predicate root, :locked? }
      assert_predicate root, :locked?, "one slice's unlock leaves the other's lock"
    end
    refute_predicate root, :locked?
    refute_predicate slice, :locked?
    root.resize(128)
    assert_equal 128, root.size
  end

  def test_slice_of_a_slice_holds_the_root
    root = IO::Buffer.new(64)
    inner = root.slice(8, 32).slice(4, 8)
    inner.locked { assert_locked_out(root) }
    refute_predicate root, :locked?
  end

  def test_created_locked_is_one_lock
    buffer = IO::Buffer.new(8, IO::Buffer::INTERNAL | IO::Buffer::LOCKED)
    assert_predicate buffer, :locked?
    buffer.locked { }
    assert_predicate buffer, :locked?, "the creation's lock remains"
    assert_locked_out(buffer)
  end

  def test_read_and_write_while_locked
    r, w = IO.pipe
    buffer = IO::Buffer.new(5)
    buffer.locked do
      buffer.set_string("hello")
      assert_equal 5, buffer.write(w)
      assert_equal 5, buffer.read(r)
      assert_predicate buffer, :locked?
    end
    refute_predicate buffer, :locked?, "the operations' own locks are released"
    assert_equal "hello", buffer.get_string
  ensure
    r&.close; w&.close
  end

  def test_compaction_while_a_slice_is_locked
    omit "GC.compact is not supported here" unless GC.respond_to?(:compact)
    root = IO::Buffer.new(4096)
    slice = root.slice(0, 16)
    slice.locked do
      GC.compact
      assert_locked_out(root)
      slice.set_string("compacted")
    end
    assert_equal "compacted", root.get_string(0, 9)
    root.free
  end
end
