# frozen_string_literal: true

require "vagrant"

module VagrantPlugins
  module Ctd
    # config.vm.provider :ctd do |ctd| ... end
    class Config < Vagrant.plugin("2", :config)
      # where ctd is: the local socket (default CTD_SOCKET or /run/ctd/ctd.sock) or a remote
      attr_accessor :socket, :remote, :token, :fingerprint
      # the instance
      attr_accessor :name, :type, :template, :memory, :cpus, :diskspace, :features, :privileged
      # the network: a ctd network (made by the plugin when network_subnet is given and it is
      # missing; deleted again at destroy if the plugin made it and nothing else uses it)
      attr_accessor :network, :network_subnet, :network_nat

      def initialize
        super
        @socket = @remote = @token = @fingerprint = UNSET_VALUE
        @name = @type = @template = @memory = @cpus = @diskspace = @features = @privileged = UNSET_VALUE
        @network = @network_subnet = @network_nat = UNSET_VALUE
      end

      def finalize!
        @socket = nil if @socket == UNSET_VALUE
        @remote = nil if @remote == UNSET_VALUE
        @token = nil if @token == UNSET_VALUE
        @fingerprint = nil if @fingerprint == UNSET_VALUE
        @name = nil if @name == UNSET_VALUE
        @type = "container" if @type == UNSET_VALUE
        @template = nil if @template == UNSET_VALUE
        @memory = nil if @memory == UNSET_VALUE
        @cpus = nil if @cpus == UNSET_VALUE
        @diskspace = nil if @diskspace == UNSET_VALUE
        @features = [] if @features == UNSET_VALUE
        @privileged = false if @privileged == UNSET_VALUE
        @network = nil if @network == UNSET_VALUE
        @network_subnet = nil if @network_subnet == UNSET_VALUE
        @network_nat = false if @network_nat == UNSET_VALUE
        @type = @type.to_s
        @features = @features.split(",").map(&:strip) if @features.is_a?(String)
      end

      def validate(machine)
        errors = _detected_errors
        errors << "ctd.type must be \"container\" or \"vm\", not #{@type.inspect}" unless %w[container vm].include?(@type)
        errors << "ctd.remote needs ctd.token" if @remote && !@token
        errors << "ctd.remote must be an https:// URL" if @remote && !@remote.to_s.start_with?("https://")
        errors << "ctd.cpus must be a whole number" if @cpus && !@cpus.to_s.match?(/\A\d+\z/)
        errors << "ctd.memory must be a size like 1024 (MiB) or \"1G\"" if @memory && !@memory.to_s.match?(/\A\d+[KMGT]?\z/i)
        errors << "ctd.diskspace must be a size like \"10G\"" if @diskspace && !@diskspace.to_s.match?(/\A\d+[KMGT]?\z/i)
        errors << "ctd.features must be a list of names" unless @features.is_a?(Array) && @features.all? { |f| f.is_a?(String) }
        if !@template && !machine.config.vm.box
          errors << "set config.vm.box (a box for provider ctd) or ctd.template (a ctd template)"
        end
        { "ctd provider" => errors }
      end

      # ctd's size syntax: a bare number in the Vagrantfile means MiB, as other providers read it.
      def memory_limit
        return nil if @memory.nil?
        @memory.to_s.match?(/\A\d+\z/) ? "#{@memory}M" : @memory.to_s.upcase
      end
    end
  end
end
